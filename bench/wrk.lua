-- Request generator for wrk, driven by bench/load.py:
--   wrk ... -s bench/wrk.lua URL -- METHOD PREFIX SUFFIX MODE TAG SEEDED BODY
-- MODE "fresh": every request names a new subject, TAG-<thread>-<n> (POSTs never hit an existing chain).
-- MODE "seeded": every request names a random existing subject, seed-<0..SEEDED-1>.
-- done() prints one "WRK_RESULT" line that load.py parses (latencies in microseconds).

local next_thread = 1

function setup(thread)
   thread:set("tid", next_thread)
   next_thread = next_thread + 1
end

function init(args)
   method, prefix, suffix, mode, tag = args[1], args[2], args[3], args[4], args[5]
   seeded = tonumber(args[6])
   if args[7] ~= "" then body = args[7] end
   n = 0
   math.randomseed(os.time() * 100 + tid)
end

function request()
   local id
   if mode == "fresh" then
      n = n + 1
      id = tag .. "-" .. tid .. "-" .. n
   else
      id = "seed-" .. math.random(0, seeded - 1)
   end
   return wrk.format(method, prefix .. id .. suffix, nil, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("WRK_RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
