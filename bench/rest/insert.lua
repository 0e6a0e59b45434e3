dofile(os.getenv("BENCH_DIR") .. "/keys.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = string.format('{"author_id": %d, "title": "bench", "pages": 100}', math.random(1, 1000))
  return wrk.format(nil, nil, nil, body)
end
