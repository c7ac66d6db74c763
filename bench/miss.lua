-- wrk script: every request gets a unique cache-busting query parameter, so every request is
-- a cache miss. Usage: wrk ... -s bench/miss.lua <url> -- <unique-prefix> <path>
-- <path> may already carry a query; `bust=` is then appended with '&'.
local counter = 0
local prefix = "b"
local path = "/"
local sep = "?"
tid = 0 -- a global: setup() gives each thread its own number

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = args[1] or tostring(os.time())
  path = args[2] or "/"
  if string.find(path, "?", 1, true) then sep = "&" end
end

function request()
  counter = counter + 1
  return wrk.format(nil, path .. sep .. "bust=" .. prefix .. "-" .. tid .. "-" .. counter)
end
