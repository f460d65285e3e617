-- wrk script: POST with the body in the file named by WRK_BODY (empty body when unset).
wrk.method = "POST"
local path = os.getenv("WRK_BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "r"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
else
  wrk.headers["Content-Type"] = "text/plain; charset=utf-8"
end
