// oxibase with supabase-js, the way you would use Supabase: sign up, write and read rows
// under RLS, upload a file, subscribe to changes, call a function.
//   oxibase &                 # in another terminal
//   npm install && npm start  # Node 22+ (Node 20: node --experimental-websocket quickstart.mjs)
// SUPABASE_URL / SUPABASE_ANON_KEY default to the local ones.
import { createClient } from '@supabase/supabase-js';

const url = process.env.SUPABASE_URL ?? 'http://127.0.0.1:54321';
// `oxibase keys` prints it (the Supabase CLI's well-known local anon key by default).
const anonKey =
  process.env.SUPABASE_ANON_KEY ??
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0';
const options = { auth: { persistSession: false } };
const supabase = createClient(url, anonKey, options);
const step = (what, detail = '') => console.log(`ok  ${what}${detail ? `: ${detail}` : ''}`);
const fail = (what, error) => {
  console.error(`FAIL ${what}: ${error?.message ?? error}`);
  process.exit(1);
};
setTimeout(() => fail('quick start', 'took longer than 60 s'), 60_000).unref();

// 1. Sign up (confirmed at once locally, as with `supabase start`).
const email = `quickstart-${Date.now()}@example.com`;
const { data: auth, error: signUpError } = await supabase.auth.signUp({ email, password: 'quickstart-pw-1' });
if (signUpError || !auth.session) fail('sign up', signUpError ?? 'no session');
const userId = auth.user.id;
step('signed up', email);

// 2. Insert and read a conversation: RLS lets its owner see it, nobody else.
const { data: conv, error: insertError } = await supabase
  .from('conversations')
  .insert({ title: 'Hello from Node' })
  .select()
  .single();
if (insertError) fail('insert', insertError);
const { data: mine } = await supabase.from('conversations').select('id, title');
if (!mine.some((c) => c.id === conv.id)) fail('read', 'own conversation missing');
const stranger = createClient(url, anonKey, options);
const { data: theirs } = await stranger.from('conversations').select('id').eq('id', conv.id);
if (theirs.length !== 0) fail('RLS', 'a signed-out client read the row');
step('inserted and read a conversation', `${mine.length} visible to its owner, 0 to anyone else`);

// 3. Subscribe to new messages of that conversation, then write one.
const received = new Promise((resolve, reject) => {
  const channel = supabase
    .channel('quickstart')
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: `conversation_id=eq.${conv.id}` }, (p) =>
      resolve({ channel, row: p.new }),
    )
    .subscribe(async (status, err) => {
      if (status === 'SUBSCRIBED') {
        const { error } = await supabase.from('messages').insert({ conversation_id: conv.id, role: 'user', content: 'Hi there!' });
        if (error) reject(error);
      } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') reject(err ?? new Error(status));
    });
});
const { channel, row } = await received.catch((e) => fail('subscribe', e));
await supabase.removeChannel(channel);
step('realtime delivered the new message', JSON.stringify(row.content));

// 4. Upload into your own folder of the private chat-files bucket; read it via a signed URL.
const path = `${userId}/hello.txt`;
const { error: uploadError } = await supabase.storage
  .from('chat-files')
  .upload(path, new Blob(['Hello, storage!'], { type: 'text/plain' }), { contentType: 'text/plain' });
if (uploadError) fail('upload', uploadError);
const { data: signed, error: signError } = await supabase.storage.from('chat-files').createSignedUrl(path, 60);
if (signError) fail('sign', signError);
const text = await (await fetch(signed.signedUrl)).text();
if (text !== 'Hello, storage!') fail('download', text);
step('uploaded and read back through a signed URL', path);

// 5. Call a function: code-execution runs Python in oxibase's sandbox.
const { data: run, error: runError } = await supabase.functions.invoke('code-execution', {
  body: { language: 'python', code: 'print(sum(range(10)))' },
});
if (runError) fail('function', runError);
if (run.stdout.trim() !== '45') fail('function', JSON.stringify(run));
step('code-execution ran Python', `stdout ${run.stdout.trim()} in ${run.duration_ms} ms`);

await supabase.auth.signOut();
console.log('All done.');
process.exit(0);
