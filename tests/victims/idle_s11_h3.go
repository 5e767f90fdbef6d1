// An idle Go program for test_probes_s11_h3: goroutines blocked on a channel, a timer
// and a mutex, a signal handler; each SIGUSR1 prints "ok N".
package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	out, err := os.OpenFile(os.Args[1], os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0644)
	if err != nil {
		os.Exit(2)
	}
	never := make(chan int)
	var mu sync.Mutex
	mu.Lock()
	for i := 0; i < 4; i++ {
		go func() { <-never }()
	}
	go func() { mu.Lock() }()
	go func() { time.Sleep(1000 * time.Hour) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	time.Sleep(100 * time.Millisecond)
	fmt.Fprintf(out, "ready %d\n", os.Getpid())
	for n := 0; ; n++ {
		<-sig
		fmt.Fprintf(out, "ok %d\n", n)
	}
}
