-- Argo CD health check for permafrost.dev/GuardedRelease.
--
-- Healthy      the spec's revision is the stable one and its replicas are Ready.
-- Progressing  the operator has not observed the current spec yet, or a revision is being
--              verified, or it waits for referenced config, or the stable revision is scaling.
-- Degraded     a revision failed (rolled back, or left running when automatic rollback is off),
--              or a GuardrailPolicy or a promotion gate (inconclusive, misconfigured) holds the
--              rollout, or what runs violates an Enforce policy
--              (it keeps serving; while a revision is verified it stays Progressing); the
--              message says which and why.
-- Suspended    promotion waits for a manual approval (every violated rule asks for the
--              annotation permafrost.dev/approved-by); annotating the release resumes it.
--              Needs Lua's string library (argocd-cm: useOpenLibs, see below); without it
--              such a release is Degraded, held by policy.
--
-- Reads only status.observedGeneration, status.desiredRevision, status.stableRevision and the
-- conditions Ready, Progressing, Degraded, RolledBack and PolicyCompliant; any of them may be
-- absent. A release Permafrost rolled back keeps its spec: Argo CD shows it Degraded, Synced.
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

-- A violation of the summary "policy/rule: message; policy/rule: message" asks for an approval
-- when its message names the approval annotation. Messages may contain "; " themselves: a
-- piece that does not start with "policy/rule: " continues the previous violation.
--
-- NB: Argo CD runs health checks without Lua's string library (only base, table, package and
-- a safe os) unless argocd-cm sets resource.customizations.useOpenLibs.<group>_<kind>: "true",
-- as the shipped patch does. Telling a wait for approval from a hold needs the library; without
-- it (the key left out) every hold is Degraded with the policy's message, and nothing fails.
local APPROVAL = "permafrost.dev/approved-by"

local function only_approvals(summary)
  if string == nil then
    return false
  end
  local violations = {}
  for piece in string.gmatch(summary .. "; ", "(.-); ") do
    if string.find(piece, "^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9]*: ") or #violations == 0 then
      table.insert(violations, piece)
    else
      violations[#violations] = violations[#violations] .. "; " .. piece
    end
  end
  if #violations == 0 then
    return false
  end
  for _, v in ipairs(violations) do
    if string.find(v, APPROVAL, 1, true) == nil then
      return false
    end
  end
  return true
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Permafrost to observe the release"
  return hs
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if status.observedGeneration == nil
  or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for Permafrost to observe the latest spec"
  return hs
end

local rolledBack = condition(status, "RolledBack")
if rolledBack ~= nil and rolledBack.status == "True" and rolledBack.reason ~= "ManualRollback" then
  hs.status = "Degraded"
  hs.message = "Rolled back (" .. tostring(rolledBack.reason) .. "): "
    .. text(rolledBack, "the desired revision failed")
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = "Revision failed (" .. tostring(degraded.reason) .. "): "
    .. text(degraded, "the desired revision failed")
  return hs
end

local compliant = condition(status, "PolicyCompliant")
if compliant ~= nil and compliant.status == "False" then
  local why = text(compliant, "a GuardrailPolicy is violated")
  if compliant.reason == "PromotionHeld" and only_approvals(why) then
    hs.status = "Suspended"
    hs.message = "Waiting for approval: " .. why
  elseif compliant.reason == "EnforcedPolicyViolated" then
    -- NB: nothing is held (yet): a revision still being verified is Progressing (its promotion
    -- will then be held, PromotionHeld); otherwise what runs breaks a rule now in force.
    local verifying = condition(status, "Progressing")
    if verifying ~= nil and verifying.status == "True" then
      hs.status = "Progressing"
      hs.message = text(verifying, "A revision is being verified") .. " (" .. why .. ")"
    else
      hs.status = "Degraded"
      hs.message = "Violates an enforced policy: " .. why
    end
  else
    hs.status = "Degraded"
    hs.message = "Held by policy (" .. tostring(compliant.reason) .. "): " .. why
  end
  return hs
end

local progressing = condition(status, "Progressing")
if progressing ~= nil and (progressing.reason == "GateInconclusive"
  or progressing.reason == "GateMisconfigured") then
  -- NB: a promotion gate holds the revision (unknown is never healthy): it takes no traffic,
  -- and fails at its progress deadline unless the spec changes or it is retried.
  hs.status = "Degraded"
  hs.message = "Held by a promotion gate (" .. tostring(progressing.reason) .. "): "
    .. text(progressing, "a gate is inconclusive")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = text(progressing, "A revision is being verified")
  return hs
end
if progressing ~= nil and progressing.reason == "ConfigNotFound" then
  hs.status = "Progressing"
  hs.message = text(progressing, "Waiting for referenced config")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  if status.stableRevision ~= nil and status.stableRevision == status.desiredRevision then
    hs.status = "Healthy"
    hs.message = text(ready, "The desired revision is stable")
    if rolledBack ~= nil and rolledBack.status == "True" then
      hs.message = hs.message .. " (" .. text(rolledBack, "manually rolled back") .. ")"
    end
    return hs
  end
  hs.status = "Progressing"
  if status.stableRevision == nil then
    hs.message = "No revision is stable yet"
  else
    hs.message = "Revision " .. tostring(status.desiredRevision)
      .. " is not stable yet; revision " .. status.stableRevision .. " serves"
  end
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the release to become Ready")
return hs
