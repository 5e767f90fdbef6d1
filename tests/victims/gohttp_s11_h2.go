// A Go net/http server for test_probes_s11_h2: /stream writes "line N" every 20 ms
// (a time.Ticker, Flush each), /big 32 MiB from memory in one Write (the goroutine
// parked in the netpoller until the socket drains), /slow answers after a 2 s timer,
// / the count of requests served, /signals the SIGUSR1s and SIGHUPs it was sent
// (signal.Notify: the runtime's handlers, on each thread's alternate stack).  Ports and "ready" on stdout's file.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

var served, signals int64

func main() {
	out, _ := os.OpenFile(os.Args[1], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0644)
	big := make([]byte, 32<<20)
	x := uint32(12345)
	for i := range big {
		x = x*1103515245 + 12345
		big[i] = byte(x >> 16)
	}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGHUP)
	go func() {
		for range sig {
			atomic.AddInt64(&signals, 1)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/signals", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "signals %d\n", atomic.LoadInt64(&signals))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served %d\n", atomic.AddInt64(&served, 1))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		f := w.(http.Flusher)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for i := 0; i < n; i++ {
			<-t.C
			now := time.Now()
			if now.Before(last) {
				fmt.Fprintf(w, "FAIL clock went back\n")
			}
			last = now
			fmt.Fprintf(w, "line %d\n", i)
			f.Flush()
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		w.Write(big)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		select {
		case <-time.After(2 * time.Second):
			fmt.Fprintf(w, "slept %v\n", time.Since(start) >= 2*time.Second)
		case <-r.Context().Done():
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:8081")
	if err != nil {
		fmt.Fprintf(out, "FAIL listen %v\n", err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: mux, IdleTimeout: 300 * time.Second}
	fmt.Fprintf(out, "ready\n")
	srv.Serve(ln)
}
