-- Argo CD health check for kiln.dev/ImageBuild (Lua 5.1, as Argo CD's gopher-lua runs it).
-- It reads kiln's kstatus conditions the way Flux and `kubectl wait` do:
--   status.observedGeneration missing or older than metadata.generation -> Progressing
--   Stalled=True (or phase Failed)                                       -> Degraded
--   Ready=True                                                           -> Healthy
--   otherwise (Reconciling: queued, unschedulable, uploading, building)   -> Progressing
-- Source of truth: contrib/argocd/health.lua; argocd-cm.yaml embeds a copy (a test keeps
-- them equal).

local function condition(status, kind)
  if status == nil or type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", or whichever of the two is set.
local function describe(reason, message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" and message ~= reason then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  return reason
end

local function health(obj)
  local hs = {}
  local generation = tonumber(obj.metadata ~= nil and obj.metadata.generation or nil)
  local status = obj.status
  local observed = tonumber(status ~= nil and status.observedGeneration or nil)

  if observed == nil or (generation ~= nil and observed < generation) then
    hs.status = "Progressing"
    hs.message = "waiting for kiln to observe generation " .. tostring(generation or 1)
    if observed ~= nil then
      hs.message = hs.message .. " (status describes generation " .. tostring(observed) .. ")"
    end
    return hs
  end

  local stalled = condition(status, "Stalled")
  if is_true(stalled) then
    hs.status = "Degraded"
    hs.message = describe(stalled.reason, stalled.message) or "the build failed"
    return hs
  end
  if status.phase == "Failed" then
    hs.status = "Degraded"
    hs.message = describe(status.reason, status.message) or "the build failed"
    return hs
  end

  local ready = condition(status, "Ready")
  if is_true(ready) then
    hs.status = "Healthy"
    hs.message = describe(nil, ready.message) or "built"
    if status.imageRef ~= nil and status.imageRef ~= "" then
      hs.message = hs.message .. ": " .. status.imageRef
    elseif status.shortDigest ~= nil and status.shortDigest ~= "" then
      hs.message = hs.message .. " (digest " .. status.shortDigest .. ")"
    end
    return hs
  end

  hs.status = "Progressing"
  local reconciling = condition(status, "Reconciling")
  if reconciling ~= nil then
    hs.message = describe(reconciling.reason, reconciling.message)
  elseif ready ~= nil then
    hs.message = describe(ready.reason, ready.message)
  else
    hs.message = describe(status.reason, status.message)
  end
  hs.message = hs.message or "waiting for kiln"
  return hs
end

return health(obj)
