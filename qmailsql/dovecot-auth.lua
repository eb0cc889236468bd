-- qmailsql's passdb and userdb for Dovecot (driver = lua; Dovecot 2.3 and 2.4).
--
-- Every answer comes from qmailsqld over its unix socket (csrc/PROTOCOL.md: the
-- passdb, userdb and iterate commands). This script holds no DB login and checks no
-- password: qmailsqld does, with the same rules as checkpassword. It runs in
-- Dovecot's auth-worker processes as Dovecot's unprivileged user, which qmailsqld
-- admits by uid. `qmailsql dovecot-config` prints the configuration that loads it.
--
-- qmailsqld's status becomes Dovecot's result: 0 OK, 1 refused (wrong password,
-- unknown, suspended, barred: Dovecot says "Authentication failed"), anything else,
-- and no answer at all, a temporary failure (never a refusal, which Dovecot's auth
-- cache would keep).
--
-- The socket: lua_settings { socket = ... } (2.4), else $QMAILSQL_SOCKET (2.3: the
-- fragment's import_environment), else QMAILSQL_SOCKET_DEFAULT below.

local unix = require("socket.unix")

local QMAILSQL_SOCKET_DEFAULT = "/var/qmail/qmailsql/qmailsqld.sock"
local TIMEOUT = 60          -- seconds per step; qmailsqld answers a stuck request itself
local MAX_PAYLOAD = 65536

local socket_path = os.getenv("QMAILSQL_SOCKET") or QMAILSQL_SOCKET_DEFAULT

function script_init(settings)
  if type(settings) == "table" and settings.socket and settings.socket ~= "" then
    socket_path = settings.socket
  end
  return 0
end

-- one request (a list of strings), one answer: status (number), body (string);
-- nil and a reason when qmailsqld cannot be asked
local function ask(fields)
  local payload = table.concat(fields, "\0") .. "\0"
  local c = unix()
  c:settimeout(TIMEOUT)
  local ok, err = c:connect(socket_path)
  if ok then
    ok, err = c:send(#payload .. ":" .. payload .. ",")
  end
  if not ok then
    c:close()
    return nil, "cannot reach qmailsqld at " .. socket_path .. ": " .. tostring(err)
  end
  local digits = ""
  while true do
    local ch
    ch, err = c:receive(1)
    if not ch then
      c:close()
      return nil, "no answer from qmailsqld at " .. socket_path .. ": " .. tostring(err)
    end
    if ch == ":" and digits ~= "" then break end
    if not ch:match("^%d$") or #digits >= 6 then
      c:close()
      return nil, "malformed answer from qmailsqld at " .. socket_path
    end
    digits = digits .. ch
  end
  local n = tonumber(digits)
  local data
  if n <= MAX_PAYLOAD then
    data, err = c:receive(n + 1)
  end
  c:close()
  if not data or data:sub(-1) ~= "," then
    return nil, "short or malformed answer from qmailsqld at " .. socket_path
  end
  local nul = data:find("\0", 1, true)
  local status = nul and tonumber(data:sub(1, nul - 1))
  if not status or nul > 4 then
    return nil, "malformed status from qmailsqld at " .. socket_path
  end
  return status, data:sub(nul + 1, n)
end

-- "key=value\0key=value\0" -> { key = value, ... }
local function fields_of(body)
  local t = {}
  for item in body:gmatch("([^\0]*)\0") do
    local k, v = item:match("^([^=]+)=(.*)$")
    if k then t[k] = v end
  end
  return t
end

local function service_of(req)
  return req.service or req.protocol or ""   -- 2.4 calls it protocol
end

-- qmailsqld's status -> Dovecot's result: 0 OK (and the fields), 1 REFUSED, any
-- other status or none at all FAILURE, with the reason for Dovecot's log
local function outcome(status, body, ok, refused, failure)
  if status == 0 then return ok, fields_of(body) end
  if status == 1 then return refused, body end
  return failure, "qmailsqld: " .. tostring(body)
end

function auth_password_verify(req, password)
  local status, body = ask({"passdb", req.user, password, service_of(req),
                            req.remote_ip or ""})
  return outcome(status, body, dovecot.auth.PASSDB_RESULT_OK,
                 dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH,
                 dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE)
end

-- qmailsqld never hands out stored passwords, so challenge-response mechanisms
-- (CRAM-MD5, DIGEST-MD5, SCRAM) cannot work: use plain or login
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE,
         "qmailsqld verifies passwords itself: use auth_mechanisms = plain login"
end

function auth_userdb_lookup(req)
  local status, body = ask({"userdb", req.user})
  return outcome(status, body, dovecot.auth.USERDB_RESULT_OK,
                 dovecot.auth.USERDB_RESULT_USER_UNKNOWN,
                 dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE)
end

-- doveadm -A, doveadm user '*': every mailbox name, asked for a page at a time
function auth_userdb_iterate()
  local users, after = {}, ""
  while true do
    local status, body = ask({"iterate", after})
    if status ~= 0 then
      error("qmailsqld: " .. tostring(body))
    end
    local got = 0
    for name in body:gmatch("([^\0]*)\0") do
      users[#users + 1] = name
      after = name
      got = got + 1
    end
    if got == 0 then return users end
  end
end

-- Dovecot 2.4 asks these for the auth cache keys (2.3 takes cache_key= from the
-- fragment): the service is part of the passdb key, so a bar on one service is never
-- answered from another's cache entry
function auth_passdb_get_cache_key()
  return "%{user}\t%{protocol}"
end

function auth_userdb_get_cache_key()
  return "%{user}"
end
