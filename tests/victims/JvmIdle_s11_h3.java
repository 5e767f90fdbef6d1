// An idle JVM for test_probes_s11_h3: threads parked, sleeping and waiting on a
// monitor; "ok N" each time the file named by args[1] grows (no signal: the JVM's own).
import java.io.FileWriter;
import java.nio.file.Files;
import java.nio.file.Path;

public class JvmIdle_s11_h3 {
    public static void main(String[] args) throws Exception {
        FileWriter out = new FileWriter(args[0], true);
        Object mon = new Object();
        Thread a = new Thread(() -> { synchronized (mon) { try { mon.wait(); } catch (InterruptedException e) { } } }, "jvm-wait");
        Thread b = new Thread(() -> { try { Thread.sleep(1L << 40); } catch (InterruptedException e) { } }, "jvm-sleep");
        a.setDaemon(true); b.setDaemon(true); a.start(); b.start();
        Thread.sleep(200);
        out.write("ready " + ProcessHandle.current().pid() + "\n");
        out.flush();
        Path poke = Path.of(args[1]);
        long seen = 0;
        for (int n = 0;; ) {
            Thread.sleep(200);
            long now = Files.exists(poke) ? Files.size(poke) : 0;
            if (now != seen) { seen = now; out.write("ok " + n++ + "\n"); out.flush(); }
        }
    }
}
