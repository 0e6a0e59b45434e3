dofile(os.getenv("BENCH_DIR") .. "/keys.lua")
request = function()
  return wrk.format(nil, "/rest/v1/bench_books?id=eq." .. math.random(1, 10000))
end
