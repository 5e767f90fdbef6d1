// A Go program as services are written: an HTTP server on loopback (the runtime's
// netpoller: epoll, non-blocking sockets), eight worker goroutines fed by a channel
// (threads parked in futexes, preempted by the runtime's SIGURG), a mutex-guarded map
// of 512 pages it checks every round, a ticker and a forced GC each round.  It reports
// "port N" once, then "ok N" per good round or "FAIL ..."; GET / answers the running
// total, which only grows.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

var total int64

func main() {
	out, err := os.OpenFile(os.Args[1], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0644)
	if err != nil {
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(out, "FAIL listen %v\n", err)
		os.Exit(2)
	}
	fmt.Fprintf(out, "port %d\n", ln.Addr().(*net.TCPAddr).Port)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "total %d\n", atomic.LoadInt64(&total))
	})
	go http.Serve(ln, nil)
	var mu sync.Mutex
	pages := make(map[int][]byte)
	work := make(chan int, 16)
	var done sync.WaitGroup
	for g := 0; g < 8; g++ {
		go func() {
			for i := range work {
				b := make([]byte, 4096)
				for j := range b {
					b[j] = byte(i*7 + j)
				}
				mu.Lock()
				pages[i%512] = b
				mu.Unlock()
				atomic.AddInt64(&total, int64(i))
				done.Done()
			}
		}()
	}
	ticker := time.NewTicker(50 * time.Millisecond)
	last := time.Now()
	for n := 0; ; n++ {
		<-ticker.C
		done.Add(100)
		for k := 0; k < 100; k++ {
			work <- n*100 + k
		}
		done.Wait()
		bad := 0
		mu.Lock()
		for _, b := range pages {
			for j := 0; j < len(b); j += 97 {
				if b[j] != byte(int(b[0])+j) {
					bad++
				}
			}
		}
		mu.Unlock()
		runtime.GC()
		now := time.Now()
		if bad != 0 || now.Before(last) {
			fmt.Fprintf(out, "FAIL round %d: %d bad bytes\n", n, bad)
		} else {
			fmt.Fprintf(out, "ok %d\n", n)
		}
		last = now
	}
}
