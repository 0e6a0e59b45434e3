// websocket-handler: one socket per signed-in tab; join the open conversation, see who is
// there (presence), who is typing, and every new message of it, whoever wrote it.
import { ANON_KEY, SUPABASE_URL, session } from './client';

export type ServerEvent =
  | { type: 'joined' | 'presence'; conversation_id: string; users: string[] }
  | { type: 'typing'; conversation_id: string; user_id: string; is_typing: boolean }
  | { type: 'message'; message: Record<string, unknown> & { id: string; conversation_id: string } }
  | { type: 'error'; code: string; message: string }
  | { type: 'pong' };

export class Live {
  private ws: WebSocket | null = null;
  private room: string | null = null;
  private queue: string[] = [];
  private closed = false;
  private retry = 500;
  private pinger: number | undefined;

  constructor(private onEvent: (e: ServerEvent) => void) {
    this.connect();
  }

  private connect(): void {
    const token = session.current?.access_token;
    if (!token || this.closed) return;
    const base = SUPABASE_URL.replace(/^http/, 'ws');
    const ws = new WebSocket(
      `${base}/functions/v1/websocket-handler?token=${encodeURIComponent(token)}&apikey=${encodeURIComponent(ANON_KEY)}`,
    );
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 500;
      if (this.room) ws.send(JSON.stringify({ type: 'join', conversation_id: this.room }));
      for (const q of this.queue.splice(0)) ws.send(q);
      this.pinger = window.setInterval(() => this.send({ type: 'ping' }), 25_000);
    };
    ws.onmessage = (m) => {
      try {
        this.onEvent(JSON.parse(String(m.data)));
      } catch {
        /* not ours */
      }
    };
    ws.onclose = () => {
      window.clearInterval(this.pinger);
      if (this.closed) return;
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10_000);
    };
  }

  private send(frame: object): void {
    const text = JSON.stringify(frame);
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(text);
    else if ((frame as { type: string }).type !== 'typing') this.queue.push(text);
  }

  join(conversationId: string | null): void {
    if (this.room === conversationId) return;
    if (this.room) this.send({ type: 'leave', conversation_id: this.room });
    this.room = conversationId;
    if (conversationId) this.send({ type: 'join', conversation_id: conversationId });
  }

  typing(isTyping: boolean): void {
    if (this.room) this.send({ type: 'typing', conversation_id: this.room, is_typing: isTyping });
  }

  message(content: string): void {
    if (this.room) this.send({ type: 'message', conversation_id: this.room, content });
  }

  close(): void {
    this.closed = true;
    window.clearInterval(this.pinger);
    this.ws?.close();
  }
}
