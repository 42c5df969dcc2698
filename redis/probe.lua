-- The look a node's first subscriber to a channel takes (src/redis/reads.rs
-- `probe`): does the channel's stream exist, and where do the partition's births
-- stand. One script, so the two are one moment: a channel created after it has a
-- birth after the id returned, and a node that waits for that birth misses nothing.
--
-- KEYS[1] stream  tickstream:{p<N>}:s:<channel>
-- KEYS[2] births  tickstream:{p<N>}:births
-- Returns {exists (0 or 1), the births' last generated id ('' when none)}: the
-- stream's own record of the newest id it handed out.
local id = ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      id = info[i + 1]
    end
  end
end
return {redis.call('EXISTS', KEYS[1]), id}
