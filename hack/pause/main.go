// Command pause is the local node's pod sandbox image: the first process of every pod, holding
// its namespaces. It waits for SIGINT or SIGTERM and exits 0. Unlike the upstream pause it does
// not reap zombies: the node's pods don't share their PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// NB: as PID 1 of a PID namespace a process gets only the signals it handles, so these two
	// must be caught explicitly or the container could only be SIGKILLed.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
