dofile(os.getenv("BENCH_DIR") .. "/keys.lua")
request = function()
  return wrk.format(nil, "/rest/v1/bench_books?select=id,title,pages&pages=gt." .. math.random(100, 900) .. "&order=id&limit=20")
end
