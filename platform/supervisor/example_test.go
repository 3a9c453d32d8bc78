//go:build unix

package supervisor_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"time"

	"github.com/shoal-dev/shoal/platform/supervisor"
)

// Two workers, each a shell that reports ready on fd 3 and then waits to
// be stopped: the readiness protocol is a line on a pipe, so a worker can
// be written in any language.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sup, err := supervisor.Start(ctx, supervisor.Config{
		Workers: 2,
		Command: func(slot int) *exec.Cmd {
			return exec.Command("sh", "-c", `echo "ready worker-$1" >&3; exec sleep 60`, "sh", strconv.Itoa(slot))
		},
		Drain: 5 * time.Second,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, w := range sup.Workers() {
		fmt.Println(w.Slot, w.State, w.Ready)
	}
	// sleep ends on SIGTERM: a rolling restart, then a stop.
	if err := sup.Restart(ctx); err != nil {
		fmt.Println(err)
	}
	if err := sup.Stop(ctx); err != nil {
		fmt.Println(err)
	}
	for _, w := range sup.Workers() {
		fmt.Println(w.Slot, w.State, w.LastExit)
	}
	// Output:
	// 1 ready worker-1
	// 2 ready worker-2
	// 1 stopped signal: terminated
	// 2 stopped signal: terminated
}

// A worker written in Go reports ready once it serves.
func ExampleNotifyReady() {
	// ... connect, subscribe, confirm the subscriptions ...
	if err := supervisor.NotifyReady("runner-id"); err != nil {
		fmt.Println(err)
	}
}
