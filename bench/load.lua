-- Keycard bench: one generic wrk script, driven by a data file that bench/ops.py writes.
--   data = { method, path, headers = {k = v}, body,      -- the request ({v} = pool value)
--            pool = { {values of thread 1}, {values of thread 2}, ... } or nil,
--            chain = "refresh_token" or nil,              -- response field fed back to the pool
--            expect = {200, ...}, max = N (per thread, 0 = no limit), stopdir = "/tmp/..." }
-- A thread that runs out (max reached, pool empty) stops and leaves a file in stopdir so
-- bench/run.py can end wrk early; done() prints one "BENCH_RESULT {json}" line.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

local data, static, pool, expect
sent, ok, bad, sample, stopped, fillers, filled = 0, 0, 0, "", false, 0, 0
local FILLER = "/bench-filler-404"

function init(args)
  data = dofile(args[1])
  expect = {}
  for _, s in ipairs(data.expect) do expect[s] = true end
  if data.pool then
    pool = data.pool[tid] or {}
  else
    static = wrk.format(data.method, data.path, data.headers, data.body)
  end
end

local function finish()
  if not stopped then
    stopped = true
    local f = io.open(data.stopdir .. "/" .. tid, "w")
    if f then f:close() end
    wrk.thread:stop()
  end
  -- wrk wants a request anyway; a cheap one, whose answer is normally never read
  return wrk.format("GET", "/healthz", {})
end

function request()
  if stopped or (data.max > 0 and sent >= data.max) then return finish() end
  if static then
    sent = sent + 1
    return static
  end
  local value = table.remove(pool)
  if value == nil then
    -- a chain's next token is still on its way (wrk may ask before the answer is read):
    -- send a cheap request that 404s, and try again after it
    if data.chain and filled < 1000 then
      fillers, filled = fillers + 1, filled + 1
      return wrk.format("GET", FILLER, {})
    end
    return finish()
  end
  sent = sent + 1
  local i, j = string.find(data.body, "{v}", 1, true)
  local body = string.sub(data.body, 1, i - 1) .. value .. string.sub(data.body, j + 1)
  return wrk.format(data.method, data.path, data.headers, body)
end

function response(status, headers, body)
  if status == 404 and fillers > 0 then
    fillers = fillers - 1
    return
  end
  if expect[status] then
    ok = ok + 1
    if data.chain then
      local value = string.match(body, '"' .. data.chain .. '"%s*:%s*"([^"]+)"')
      if value then table.insert(pool, value) end
    end
  else
    bad = bad + 1
    if sample == "" then sample = status .. " " .. string.sub(body or "", 1, 200) end
  end
end

local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end))
end

function done(summary, latency, requests)
  local oks, bads, samples = 0, 0, ""
  for _, t in ipairs(threads) do
    oks = oks + t:get("ok")
    bads = bads + t:get("bad")
    if samples == "" then samples = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "ok": %d, "unexpected": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "status_gt_399": %d, "sample": "%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, oks, bads, e.connect, e.read, e.write, e.timeout, e.status, esc(samples)))
end
