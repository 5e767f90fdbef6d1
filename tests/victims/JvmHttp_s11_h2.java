// A JVM HTTP server for test_probes_s11_h2 (com.sun.net.httpserver: a selector thread,
// a pool of handler threads): GET /stream?n=N writes "line I\n" every 10 ms, chunked,
// flushed each; GET /big?n=N writes N bytes of a pattern in one write (the handler's
// thread blocked until the socket drains); / the count of requests served.
// argv: OUT PORT.  Reports "port N".
import com.sun.net.httpserver.HttpServer;
import java.io.FileWriter;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

public class JvmHttp_s11_h2 {
    public static void main(String[] args) throws Exception {
        AtomicLong served = new AtomicLong();
        byte[] pattern = new byte[256 * 4099];
        for (int i = 0; i < pattern.length; i++) pattern[i] = (byte) i;
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[1])), 16);
        s.setExecutor(Executors.newFixedThreadPool(8));
        s.createContext("/", ex -> {
            served.incrementAndGet();
            String q = ex.getRequestURI().getQuery();
            int n = q == null ? 0 : Integer.parseInt(q.substring(2));
            String p = ex.getRequestURI().getPath();
            try (OutputStream o = ex.getResponseBody()) {
                if (p.equals("/stream")) {
                    ex.sendResponseHeaders(200, 0);
                    for (int i = 0; i < n; i++) {
                        Thread.sleep(10);
                        o.write(("line " + i + "\n").getBytes());
                        o.flush();
                    }
                } else if (p.equals("/big")) {
                    ex.sendResponseHeaders(200, n);
                    byte[] body = new byte[n];
                    for (int i = 0; i < n; i++) body[i] = pattern[i % pattern.length];
                    o.write(body);
                } else {
                    byte[] b = ("served " + served.get() + "\n").getBytes();
                    ex.sendResponseHeaders(200, b.length);
                    o.write(b);
                }
            } catch (InterruptedException e) {
                throw new RuntimeException(e);
            }
        });
        s.start();
        try (FileWriter w = new FileWriter(args[0], true)) {
            w.write("port " + args[1] + "\n");
        }
    }
}
