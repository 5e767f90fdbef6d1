// A JVM at work: four threads that each fill and check arrays of their own, a shared
// counter under a lock, a ServerSocket on loopback answering the counter, and the GC
// (System.gc each round).  It reports "port N" once, then "ok N" per good round or
// "FAIL ..." to the file named by its argument.
import java.io.*;
import java.net.*;
import java.util.concurrent.atomic.AtomicLong;

public class JvmWork {
    static final AtomicLong total = new AtomicLong();
    static volatile String failure = null;

    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new FileOutputStream(args[0], true), true);
        ServerSocket server = new ServerSocket(0, 8, InetAddress.getByName("127.0.0.1"));
        out.println("port " + server.getLocalPort());
        Thread srv = new Thread(() -> {
            while (true) {
                try (Socket c = server.accept()) {
                    c.getOutputStream().write(("total " + total.get() + "\n").getBytes());
                } catch (IOException e) { failure = "accept " + e; }
            }
        });
        srv.setDaemon(true);
        srv.start();
        for (int t = 0; t < 4; t++) {
            final int me = t;
            Thread w = new Thread(() -> {
                long[] a = new long[1 << 16];
                for (long r = 0; ; r++) {
                    for (int i = 0; i < a.length; i++) a[i] = r * 1000003L + i + me;
                    for (int i = 0; i < a.length; i += 101)
                        if (a[i] != r * 1000003L + i + me) failure = "thread " + me;
                    total.incrementAndGet();
                    try { Thread.sleep(5); } catch (InterruptedException e) { return; }
                }
            });
            w.setDaemon(true);
            w.start();
        }
        for (long n = 0; ; n++) {
            Thread.sleep(100);
            System.gc();
            String f = failure;
            out.println(f != null ? "FAIL " + f : "ok " + n);
        }
    }
}
