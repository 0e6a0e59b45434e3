// The one supabase-js client. Served by `oxibase --static`, the app talks to the server that
// serves it; a build with SUPABASE_URL / SUPABASE_ANON_KEY points anywhere (Supabase too).
import { createClient, type Session } from '@supabase/supabase-js';

declare const __SUPABASE_URL__: string;
declare const __SUPABASE_ANON_KEY__: string;

// The Supabase CLI's well-known local anon key (and so oxibase's default one).
const LOCAL_ANON_KEY =
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0';

export const SUPABASE_URL = __SUPABASE_URL__ || window.location.origin;
export const ANON_KEY = __SUPABASE_ANON_KEY__ || LOCAL_ANON_KEY;

export const supabase = createClient(SUPABASE_URL, ANON_KEY);

export const session: { current: Session | null } = { current: null };

export function me(): string {
  return session.current?.user.id ?? '';
}

export function myEmail(): string {
  return session.current?.user.email ?? '';
}

/** The error body a function answered (`{"error": {"code", "message"}}`), if any. */
export async function functionError(
  error: unknown,
): Promise<{ status: number; code: string; message: string }> {
  const ctx = (error as { context?: Response })?.context;
  if (ctx && typeof ctx.json === 'function') {
    try {
      const body = await ctx.clone().json();
      return { status: ctx.status, code: body?.error?.code ?? '', message: body?.error?.message ?? body?.message ?? '' };
    } catch {
      return { status: ctx.status, code: '', message: ctx.statusText };
    }
  }
  return { status: 0, code: 'network', message: (error as Error)?.message ?? String(error) };
}
