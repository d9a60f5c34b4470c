/**
 * Two Lua scripts that read and write many wake-up jobs in one call each. They write the same
 * Redis structures as BullMQ 6.7 (read in node_modules/bullmq/dist/esm/commands), so a job
 * armed here is an ordinary delayed BullMQ job to Worker, getJob, getJobState and Bull Board:
 *
 * - the job hash `<prefix>:<queue>:<jobId>` with the fields BullMQ's storeJob writes, in its
 *   order: name, data, opts, timestamp, delay, priority;
 * - the member `<jobId>` of the sorted set `<prefix>:<queue>:delayed`, scored
 *   fireAt * 4096 + n, where n counts jobs already due in the same millisecond (BullMQ's
 *   getDelayedScore), so the fire time is exact and same-millisecond jobs keep their order;
 * - the sorted set `<prefix>:<queue>:marker`, whose member "1" BullMQ scores with the delayed
 *   head's fire time (addDelayMarkerIfNeeded): a worker blocked in BZPOPMIN on it wakes up and
 *   recomputes its block time when the head moves earlier.
 *
 * Deliberately not written: the events stream (`:events`, read only by QueueEvents, which
 * nothing here uses; it is capped at ~10,000 entries and says nothing durable), the job-id
 * counter (`:id`, only used for generated ids) and the `meta` hash (BullMQ writes its defaults
 * there itself).
 */

/**
 * View: KEYS[1] the delayed set; ARGV[1] the job key prefix, ARGV[2..] job ids. Returns per id
 * its delayed score, or "x" (the job exists and is not delayed), or "m" (no job).
 */
export const VIEW_LUA = `
local delayedKey = KEYS[1]
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local score = redis.call("ZSCORE", delayedKey, ARGV[i])
  if score then
    out[i - 1] = score
  elseif redis.call("EXISTS", prefix .. ARGV[i]) == 1 then
    out[i - 1] = "x"
  else
    out[i - 1] = "m"
  end
end
return out
`;

/**
 * Arm: KEYS[1] the delayed set, KEYS[2] the marker, KEYS[3] the shard's fence high-water mark
 * (the highest ARGV[5] any call has carried); ARGV[1] the job key prefix, ARGV[2] now
 * (epoch ms, the job's creation timestamp), ARGV[3] the job name, ARGV[4] the opts JSON, ARGV[5]
 * the arm fence (a number from Postgres' arm_seq, taken under the identities' row locks), then
 * one triple per item: the op, the job id, the fire time (epoch ms). Ops: "r" (reschedule a
 * delayed job), "e" (move a delayed job earlier), "a" (add a missing job), "d" (delete a delayed
 * job; fire time ignored). Items are applied in order. Returns per item:
 *
 * - 0 done. "r": the score becomes exactly fireAt * 4096 + n and the `delay` field
 *   fireAt - timestamp (so timestamp + delay, which Bull Board shows, is the fire time); "r" or
 *   "a" on no job hash: the job is created delayed to fireAt (a stray delayed member without a
 *   hash is replaced); "e": a delayed job firing later moved to fireAt; "d": the delayed job and
 *   its hash removed;
 * - 1 the job is not in the state the caller planned for (active, waiting, finished; "a" on a job
 *   that exists; "e" or "d" on a job that is not delayed), nothing done: re-plan it;
 * - 2 ("e" only) the job already fires at or before fireAt (an early wake-up re-arms itself);
 * - 3 fenced: the job was last armed with a newer fence than ARGV[5], nothing done. The caller's
 *   view is stale (its write timed out and landed late, or was resent); a newer arm, made under
 *   the same row lock after this one's, decided.
 * Every change records the fence in the job hash (field `kseq`). Afterwards the marker gets the
 * delayed head's fire time, once per call.
 */
export const ARM_LUA = `
local rcall = redis.call
local delayedKey = KEYS[1]
local markerKey = KEYS[2]
local fenceHighKey = KEYS[3]
local prefix = ARGV[1]
local now = ARGV[2]
local nowMs = tonumber(now)
local name = ARGV[3]
local opts = ARGV[4]
local fence = tonumber(ARGV[5])

-- BullMQ's getDelayedScore, with the last score per millisecond remembered: within this call
-- nobody else writes the delayed set.
local lastScore = {}
local function scoreFor(fireAt)
  local minScore = fireAt * 4096
  local maxScore = minScore + 4095
  local last = lastScore[fireAt]
  if last == nil then
    local top = rcall("ZREVRANGEBYSCORE", delayedKey, maxScore, minScore, "WITHSCORES", "LIMIT", 0, 1)
    last = tonumber(top[2])
  end
  local score = minScore
  if last ~= nil then score = math.min(last + 1, maxScore) end
  lastScore[fireAt] = score
  return score
end

-- The highest fence this shard has seen, recorded before any write (a script that fails midway
-- keeps what it wrote) and raised by any kseq that refuses an arm: should Postgres' arm_seq fall
-- behind it (a restore from a backup), every arm would be refused; reconcile and the watchdog
-- move arm_seq past it.
local highest = tonumber(rcall("GET", fenceHighKey))
-- A value written by hand that is no fence (nan, inf) would never be raised again: replace it.
if highest ~= nil and (highest ~= highest or highest == math.huge or highest == -math.huge) then
  highest = nil
end
local function sawFence(value)
  if highest == nil or value > highest then
    highest = value
    rcall("SET", fenceHighKey, string.format("%.0f", value))
  end
end
sawFence(fence)

local results = {}
local touched = false
for i = 6, #ARGV, 3 do
  local op = ARGV[i]
  local jobId = ARGV[i + 1]
  local fireAt = tonumber(ARGV[i + 2])
  local jobKey = prefix .. jobId
  local result = 1
  local armed = tonumber(rcall("HGET", jobKey, "kseq"))
  if armed ~= nil and armed > fence then
    sawFence(armed)
    result = 3
  else
    -- A delayed job's hash has a timestamp; none means no hash (a stray member, replaced below).
    local score = op ~= "a" and rcall("ZSCORE", delayedKey, jobId)
    local timestamp = score and rcall("HGET", jobKey, "timestamp")
    if op == "e" then
      -- Earlier only: a delayed job firing after fireAt moves to it, one firing at or before it
      -- stays; any other state is left for the caller to plan (result 1).
      if timestamp then
        result = 2
        if math.floor(tonumber(score) / 4096) > fireAt then
          rcall("ZADD", delayedKey, scoreFor(fireAt), jobId)
          rcall("HSET", jobKey, "delay", math.max(0, fireAt - tonumber(timestamp)), "kseq", fence)
          result = 0
        end
      end
    elseif op == "d" then
      if score then
        rcall("ZREM", delayedKey, jobId)
        rcall("DEL", jobKey, jobKey .. ":logs")
        result = 0
      end
    elseif timestamp then
      rcall("ZADD", delayedKey, scoreFor(fireAt), jobId)
      rcall("HSET", jobKey, "delay", math.max(0, fireAt - tonumber(timestamp)), "kseq", fence)
      result = 0
    elseif rcall("EXISTS", jobKey) == 0 then
      rcall("HSET", jobKey, "name", name, "data", "{}", "opts", opts, "timestamp", now,
        "delay", math.max(0, fireAt - nowMs), "priority", 0, "kseq", fence)
      -- ZADD also overwrites the score of a stray member left without its hash.
      rcall("ZADD", delayedKey, scoreFor(fireAt), jobId)
      result = 0
    end
  end
  if result == 0 and op ~= "d" then touched = true end
  results[#results + 1] = result
end

if touched then
  local head = rcall("ZRANGE", delayedKey, 0, 0, "WITHSCORES")
  if head[2] then rcall("ZADD", markerKey, tonumber(head[2]) / 4096, "1") end
end
return results
`;
