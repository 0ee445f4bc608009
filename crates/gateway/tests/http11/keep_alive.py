# Drives the gateway with Python's http.client on ONE keep-alive connection: every early error
# answer must be read back (no BrokenPipeError) and the connection must stay usable.
# argv: host port token stream; prints one "status code reused" line per request.
import http.client
import json
import sys

host, port, token, stream = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPConnection(host, port, timeout=10)
body = b"x" * 10_000
octets = {"Content-Type": "application/offset+octet-stream"}
auth = {"Authorization": "Bearer " + token}
first_sock = None


def send(method, path, headers, data=None):
    global first_sock
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    if first_sock is None:
        first_sock = conn.sock
    code = "-"
    if r.status >= 400:
        code = json.loads(payload)["error"]
    reused = conn.sock is first_sock
    print(r.status, code, "reused" if reused else "new", flush=True)


p = "/v1/streams/" + stream
send("PATCH", p, {**octets, "Stream-Offset": "0"}, body)                      # 401
send("PATCH", p, {**auth, "Content-Type": "text/plain", "Stream-Offset": "0"}, body)  # 415
send("PATCH", p, {**auth, **octets, "Stream-Offset": "0"}, body)              # 204
send("PATCH", p, {**auth, **octets, "Stream-Offset": "5"}, body)              # 409
send("PATCH", "/v1/streams/other/prod/x", {**auth, **octets, "Stream-Offset": "0"}, body)  # 403
send("PUT", p, auth, body)                                                     # 405
send("POST", "/nope", auth, body)                                              # 404
send("GET", "/v1/streams/%FF%FE/prod/x", auth)                                 # 400
send("HEAD", p, auth)                                                          # 200
