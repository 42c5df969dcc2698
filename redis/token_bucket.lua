-- tickstream: take tokens from a rate-limit bucket, atomically, shared by every node
-- (docs/PROTOCOL.md "Rate limits", docs/ARCHITECTURE.md "Admission").
--
-- The bucket in its GCRA form: instead of a token count and a refill time, the key
-- holds one number, the theoretical arrival time (TAT): the moment, in microseconds,
-- at which the bucket will be full again. Taking `cost` tokens moves it `cost`
-- emission intervals later; a request is refused when that would put it more than a
-- whole burst into the future. Same behaviour as a token bucket of `burst` tokens
-- refilled one per interval, one key, one read and one write.
--
-- The clock is Redis's own (`TIME`), so the nodes' clocks never matter.
--
-- KEYS[1] bucket   tickstream:rl:{<subject>}:<group>
-- ARGV[1] emission interval, microseconds per token (may be fractional)
-- ARGV[2] burst, tokens
-- ARGV[3] cost, tokens (1 for a request, the tick count for an ingest batch)
--
-- Returns {allowed (1|0), remaining whole tokens, retry-after in microseconds
-- (0 when allowed)}. A refused request takes nothing.

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- All arithmetic is on the distance from now (`ahead`): absolute microseconds are
-- near 2^51, where a double has no fraction left, while the distance is small and
-- keeps it. src/ratelimit/bucket.rs computes the same numbers the same way.
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local ahead = math.max(tat - now, 0)
local window = burst * interval
-- The epsilon keeps 19.9999999 (float division) from reading as 19 tokens.
local function tokens(a)
  return math.max(math.floor((window - a) / interval + 1e-6), 0)
end

local new_ahead = ahead + cost * interval
if new_ahead - window > 0 then
  return {0, tokens(ahead), math.ceil(new_ahead - window)}
end

-- The key expires when the bucket is full again: a full bucket and no key are the same.
redis.call('SET', KEYS[1], string.format('%.0f', now + new_ahead), 'PX', math.max(math.ceil(new_ahead / 1000), 1))
return {1, tokens(new_ahead), 0}
