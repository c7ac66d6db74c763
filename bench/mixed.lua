-- wrk script of bench/protect.py's mixed case: keys of Zipf-like popularity (the key of rank
-- k asked in proportion to 1/k), one in ten not storable (`Cache-Control: private`), the others
-- fresh for a few seconds (so hot keys expire and are fetched again during the run).
-- Arguments after `--`: <path prefix> <keys> <seed> <max-age s>.
local prefix, keys, seed, max_age = "/slow/m", 200, 1, 5
local cdf = {}

function init(args)
  prefix = args[1] or prefix
  keys = tonumber(args[2]) or keys
  seed = tonumber(args[3]) or seed
  max_age = tonumber(args[4]) or max_age
  local total = 0
  for k = 1, keys do total = total + 1 / k end
  local acc = 0
  for k = 1, keys do
    acc = acc + (1 / k) / total
    cdf[k] = acc
  end
  math.randomseed(seed)
end

request = function()
  local r = math.random()
  local lo, hi = 1, keys
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  local cc = (lo % 10 == 3) and "private" or ("max-age%3D" .. max_age)
  return wrk.format("GET", prefix .. "/" .. lo .. "?size=1024&cc=" .. cc)
end
