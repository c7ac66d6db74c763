-- wrk script: every request gets a cache-busting query parameter.
-- Usage: wrk ... -s bench/miss.lua <url> -- <prefix> <path> [<keys>]
-- Without <keys>, every request's parameter is unique: every request is a cache miss. With
-- <keys>, the parameter cycles through that many values: after a first pass, every request is
-- a hit on one of <keys> distinct entries (no two connections ask for one key at once, so a
-- cache can't answer many requests with one lookup).
-- <path> may already carry a query; `bust=` is then appended with '&'.
local counter = 0
local prefix = "b"
local path = "/"
local sep = "?"
local keys = nil
tid = 0 -- a global: setup() gives each thread its own number

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = args[1] or tostring(os.time())
  path = args[2] or "/"
  keys = tonumber(args[3])
  if string.find(path, "?", 1, true) then sep = "&" end
end

function request()
  counter = counter + 1
  local bust = prefix .. "-" .. tid .. "-" .. counter
  if keys then
    -- Each thread walks its own share of the keys.
    bust = prefix .. "-" .. tid .. "-" .. (counter % keys)
  end
  return wrk.format(nil, path .. sep .. "bust=" .. bust)
end
