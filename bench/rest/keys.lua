-- The headers supabase-js sends on every request: the anon key as apikey and as bearer
-- token (the default local key: the benchmark's server runs with the default JWT secret).
local anon = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
wrk.headers["apikey"] = anon
wrk.headers["Authorization"] = "Bearer " .. anon
