dofile(os.getenv("BENCH_DIR") .. "/keys.lua")
request = function()
  return wrk.format(nil, "/rest/v1/bench_authors?select=id,name,bench_books(id,title)&id=gte." .. math.random(1, 990) .. "&order=id&limit=10")
end
