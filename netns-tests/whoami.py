"""The test server of `anonnet check` in the testbed: answers every HTTP GET with the
address it sees, as plain text (as icanhazip.com does). Dual-stack, on the port given."""
import http.server
import socket
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        addr = self.client_address[0].removeprefix("::ffff:")
        body = (addr + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(self.client_address[0].removeprefix("::ffff:"), fmt % args, flush=True)


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


server = Server(("::", int(sys.argv[1])), Handler)
print("whoami serving on port", sys.argv[1], flush=True)
server.serve_forever()
