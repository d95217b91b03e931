-- wrk script for the chatd benchmark: one chat turn per request.
--
-- Driven by bench/run.sh through environment variables (wrk's Lua has no
-- other way in):
--   BENCH_MODE        chat          POST /chat (seed, non-streaming) on chatd
--                     stream        POST /v1/chat/stream (SSE) on chatd
--                     direct        POST /v1/messages on the fake, non-streaming
--                     direct_stream POST /v1/messages on the fake, "stream": true
--                     (the direct modes also go through nginx: same body, same reply)
--                     portkey       the direct request through the Portkey gateway:
--                                   POST /v1/messages (its Anthropic-shape route,
--                                   forwarded unchanged) with x-portkey-provider:
--                                   anthropic and x-portkey-custom-host:
--                                   BENCH_PORTKEY_UPSTREAM (the fake's base URL + /v1)
--                     portkey_stream the same with "stream": true
--                     stateless     POST /v1/chat/completions on chatd (nothing stored)
--                     healthz       GET /healthz on chatd
--   BENCH_PREFIX      session id prefix, distinct per phase (fresh sessions)
--   BENCH_SESSIONS    sessions in rotation, summed over all threads
--   BENCH_THREADS     wrk's -t (to split BENCH_SESSIONS between threads)
--   BENCH_MAX_TURNS   a session is retired after this many turns
--   BENCH_OUT         where done() writes its JSON summary
--   BENCH_MODEL, BENCH_MAX_TOKENS, BENCH_SYSTEM_JSON (a JSON string literal):
--                     the direct modes copy them from a request chatd really
--                     sent upstream, so both sides ask the fake the same thing.
--
-- Sessions: chatd runs one turn at a time per session (409 otherwise), and wrk
-- gives Lua no per-connection hook. So a session id is handed out again only
-- after its previous response came back: response() recovers the id from the
-- body (chatd echoes session_id; the fake echoes "bench <sid>" in its reply)
-- and queues it at the tail of a per-thread FIFO; request() takes the head once
-- the FIFO holds the thread's share of BENCH_SESSIONS, and mints a new id
-- otherwise. A session therefore never has two turns in flight, the load
-- rotates across BENCH_SESSIONS sessions, and none grows past BENCH_MAX_TURNS.
-- The direct modes replay the same bookkeeping and send the history chatd
-- would send (user "bench <sid>", assistant "Hello! You said: bench <sid>").
--
-- The stateless and healthz modes have no session: each request carries its
-- own id in X-Request-Id, which chatd echoes in the response header of the
-- same name, and that id joins the two ends instead.
--
-- Latency: measured here, from request() to response() of the same session
-- id (exact, since a session has one turn in flight), on CLOCK_MONOTONIC via
-- LuaJIT's FFI. wrk's own histogram is not used for the result: wrk 4 applies
-- a "coordinated omission" correction at the end of the run (stats_correct)
-- that adds synthetic samples for every response slower than the mean
-- inter-request gap; with a heavy tail that inflated the mean 3x in a
-- closed-loop run (checked against strace of the same run). wrk's corrected
-- percentiles are still reported, labelled, in the JSON.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local mode = os.getenv("BENCH_MODE") or "chat"
local prefix = os.getenv("BENCH_PREFIX") or "b"
local sessions_total = tonumber(os.getenv("BENCH_SESSIONS") or "2048")
local max_turns = tonumber(os.getenv("BENCH_MAX_TURNS") or "20")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local out_path = os.getenv("BENCH_OUT")
local model = os.getenv("BENCH_MODEL") or "claude-sonnet-4-6"
local max_tokens = tonumber(os.getenv("BENCH_MAX_TOKENS") or "1024")
local system_json = os.getenv("BENCH_SYSTEM_JSON") or '"You are a helpful AI assistant."'

local portkey_upstream = os.getenv("BENCH_PORTKEY_UPSTREAM") or ""

local portkey = (mode == "portkey" or mode == "portkey_stream")
local direct = (mode == "direct" or mode == "direct_stream" or portkey)
local sessionless = (mode == "stateless" or mode == "healthz")
local streaming = (mode == "stream" or mode == "direct_stream" or mode == "portkey_stream")

-- ---------------------------------------------------------------------------
-- Main state: give each thread its number, collect them for done().

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

-- ---------------------------------------------------------------------------
-- Thread state.

tid = 0            -- set by setup()
pool = 0           -- this thread's share of the rotation
minted = 0         -- sessions created
q = {}             -- FIFO of idle session ids
qh, qt = 1, 0      -- head / tail indexes of q
turns = {}         -- completed turns per session id
codes = {}         -- responses per HTTP status
ok = 0             -- 2xx with a complete, well-formed turn
bad_body = 0       -- 2xx whose body was not a complete turn (SSE error event...)
lost_sid = 0       -- responses whose session id could not be recovered
max_seen = 0       -- most turns reached by one session
sent = {}          -- session id -> time its request was handed to wrk (us)
verify_sid = nil   -- thread 0's first request() is wrk's dry run, never sent
lat = {}           -- latencies of the responses whose session id came back (us)
ovh = {}           -- chatd's X-Chatd-Overhead-Ms of every response that had one

local headers = {}

function init(args)
   pool = math.max(1, math.ceil(sessions_total / math.max(1, nthreads)))
   if direct then
      headers["Content-Type"] = "application/json"
      headers["x-api-key"] = "bench"
      headers["anthropic-version"] = "2023-06-01"
      if portkey then
         headers["x-portkey-provider"] = "anthropic"
         headers["x-portkey-custom-host"] = portkey_upstream
      end
   elseif mode ~= "healthz" then
      headers["Content-Type"] = "application/json"
      if streaming then headers["Accept"] = "text/event-stream" end
   end
end

local function take_session()
   if qt - qh + 1 >= pool then
      local sid = q[qh]
      q[qh] = nil
      qh = qh + 1
      return sid
   end
   minted = minted + 1
   return prefix .. "-" .. tid .. "-" .. minted
end

local function give_back(sid)
   local n = (turns[sid] or 0) + 1
   turns[sid] = n
   if n > max_seen then max_seen = n end
   if n >= max_turns then
      turns[sid] = nil      -- retired: forget it, a fresh one will be minted
      return
   end
   qt = qt + 1
   q[qt] = sid
end

local function direct_body(sid)
   local text = "bench " .. sid
   local user = '{"role":"user","content":"' .. text .. '"}'
   local asst = '{"role":"assistant","content":"Hello! You said: ' .. text .. '"}'
   local parts = {}
   for _ = 1, (turns[sid] or 0) do
      parts[#parts + 1] = user
      parts[#parts + 1] = asst
   end
   parts[#parts + 1] = user
   return '{"model":"' .. model .. '","max_tokens":' .. max_tokens .. ',"system":' .. system_json ..
      (streaming and ',"stream":true' or '') .. ',"messages":[' .. table.concat(parts, ",") .. ']}'
end

function request()
   if sessionless then
      minted = minted + 1
      local rid = prefix .. "-" .. tid .. "-" .. minted
      sent[rid] = now_us()
      if tid == 0 and minted == 1 and verify_sid == nil then verify_sid = rid end
      headers["X-Request-Id"] = rid
      if mode == "healthz" then
         return wrk.format("GET", "/healthz", headers)
      end
      return wrk.format("POST", "/v1/chat/completions", headers,
         '{"messages":[{"role":"user","content":"bench ' .. rid .. '"}]}')
   end
   local sid = take_session()
   sent[sid] = now_us()
   if tid == 0 and minted == 1 and verify_sid == nil then verify_sid = sid end
   if direct then
      return wrk.format("POST", "/v1/messages", headers, direct_body(sid))
   end
   local body = '{"message":"bench ' .. sid .. '","session_id":"' .. sid .. '"}'
   return wrk.format("POST", streaming and "/v1/chat/stream" or "/chat", headers, body)
end

-- Recovers the session id and checks that the body is a whole turn.
local function parse(body)
   if mode == "chat" then
      return body:match('"session_id"%s*:%s*"([^"]+)"'), body:find('"response"', 1, true) ~= nil
   elseif mode == "stream" then
      return body:match('"session_id"%s*:%s*"([^"]+)"'),
         body:find("event: done", 1, true) ~= nil and body:find("event: error", 1, true) == nil
   elseif mode == "stateless" then
      return nil, body:find('"finish_reason":"stop"', 1, true) ~= nil
   elseif mode == "healthz" then
      return nil, body:find('"ok"', 1, true) ~= nil
   elseif mode == "direct" or mode == "portkey" then
      return body:match('You said: bench ([^"]+)"'), body:find('"stop_reason":"end_turn"', 1, true) ~= nil
   else
      -- One word per delta: the id is the delta that follows "bench ".
      return body:match('"text":"bench "}}.-"text":"([^"]+)"'),
         body:find("event: message_stop", 1, true) ~= nil
   end
end

function response(status, hdrs, body)
   local t = now_us()
   codes[status] = (codes[status] or 0) + 1
   local sid, whole = parse(body or "")
   if sessionless then
      sid = hdrs and (hdrs["X-Request-Id"] or hdrs["x-request-id"])
   end
   local o = hdrs and tonumber(hdrs["X-Chatd-Overhead-Ms"] or hdrs["x-chatd-overhead-ms"] or "")
   if o then ovh[#ovh + 1] = o end
   if sid and sent[sid] then
      lat[#lat + 1] = t - sent[sid]
      sent[sid] = nil
   end
   if status >= 200 and status < 300 then
      if whole then ok = ok + 1 else bad_body = bad_body + 1 end
   end
   if not sid then
      lost_sid = lost_sid + 1
   elseif not sessionless then
      give_back(sid)
   end
end

-- ---------------------------------------------------------------------------
-- Main state again: one JSON object for bench/report.py.

local function jstr(s)
   return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local agg = { ok = 0, bad_body = 0, lost_sid = 0, minted = 0, max_turns_seen = 0 }
   local all_codes = {}
   local all = {}
   local oall = {}
   -- Turns still unanswered when wrk stopped, and the oldest one's age: a
   -- turn that never completes is not in any latency sample, so it is
   -- counted here (a stuck stream would otherwise only lower the throughput).
   local t_end, in_flight, oldest = now_us(), 0, 0
   local ages = {}
   for _, t in ipairs(threads) do
      for _, v in ipairs(t:get("lat") or {}) do all[#all + 1] = v end
      for _, v in ipairs(t:get("ovh") or {}) do oall[#oall + 1] = v end
      local skip = t:get("verify_sid")
      for sid, t0 in pairs(t:get("sent") or {}) do
         if sid ~= skip then
            in_flight = in_flight + 1
            oldest = math.max(oldest, t_end - t0)
            ages[#ages + 1] = t_end - t0
         end
      end
      agg.ok = agg.ok + (t:get("ok") or 0)
      agg.bad_body = agg.bad_body + (t:get("bad_body") or 0)
      agg.lost_sid = agg.lost_sid + (t:get("lost_sid") or 0)
      agg.minted = agg.minted + (t:get("minted") or 0)
      agg.max_turns_seen = math.max(agg.max_turns_seen, t:get("max_seen") or 0)
      for code, n in pairs(t:get("codes") or {}) do
         all_codes[code] = (all_codes[code] or 0) + n
      end
   end
   local cs = {}
   for code, n in pairs(all_codes) do cs[#cs + 1] = jstr(code) .. ":" .. n end
   -- Nearest-rank percentiles of the measured latencies.
   table.sort(all)
   local n, sum = #all, 0
   -- Stuck: unanswered for longer than 2 s and than any turn that completed.
   local stuck_after = math.max(2000000, all[n] or 0)
   local stuck = 0
   for _, a in ipairs(ages) do
      if a > stuck_after then stuck = stuck + 1 end
   end
   for i = 1, n do sum = sum + all[i] end
   local pct, wpct = {}, {}
   for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
      local v = n > 0 and all[math.max(1, math.ceil(p / 100 * n))] or 0
      pct[#pct + 1] = jstr(p) .. ":" .. v
      wpct[#wpct + 1] = jstr(p) .. ":" .. latency:percentile(p)
   end
   table.sort(oall)
   local opct = {}
   for _, p in ipairs({ 50, 99, 99.9 }) do
      local v = #oall > 0 and oall[math.max(1, math.ceil(p / 100 * #oall))] or 0
      opct[#opct + 1] = jstr(p) .. ":" .. v
   end
   local e = summary.errors
   local text = "{" ..
      '"mode":' .. jstr(mode) ..
      ',"duration_us":' .. summary.duration ..
      ',"responses":' .. summary.requests ..
      ',"bytes":' .. summary.bytes ..
      ',"ok":' .. agg.ok ..
      ',"bad_body":' .. agg.bad_body ..
      ',"lost_session_id":' .. agg.lost_sid ..
      ',"sessions_minted":' .. agg.minted ..
      ',"max_turns_seen":' .. agg.max_turns_seen ..
      ',"in_flight_at_end":' .. in_flight .. ',"oldest_in_flight_us":' .. oldest ..
      ',"stuck_at_end":' .. stuck .. ',"stuck_after_us":' .. stuck_after ..
      ',"status_codes":{' .. table.concat(cs, ",") .. "}" ..
      ',"errors":{"connect":' .. e.connect .. ',"read":' .. e.read .. ',"write":' .. e.write ..
      ',"status":' .. e.status .. ',"timeout":' .. e.timeout .. "}" ..
      ',"latency_us":{"samples":' .. n .. ',"min":' .. (all[1] or 0) .. ',"max":' .. (all[n] or 0) ..
      ',"mean":' .. (n > 0 and sum / n or 0) .. ',"percentiles":{' .. table.concat(pct, ",") .. "}}" ..
      ',"overhead_header_ms":{"samples":' .. #oall .. ',"max":' .. (oall[#oall] or 0) ..
      ',"percentiles":{' .. table.concat(opct, ",") .. "}}" ..
      ',"wrk_corrected_latency_us":{"max":' .. latency.max .. ',"mean":' .. latency.mean ..
      ',"percentiles":{' .. table.concat(wpct, ",") .. "}}" ..
      "}\n"
   if out_path then
      local f = assert(io.open(out_path, "w"))
      f:write(text)
      f:close()
   else
      io.write(text)
   end
end
