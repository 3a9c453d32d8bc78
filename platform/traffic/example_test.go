package traffic_test

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/platform/traffic"
)

// The gateway observes each answered request into its function's series;
// GET /system/stats?window=20&step=10 reads a snapshot.
func ExampleRecorder_Snapshot() {
	now := time.Date(2026, 3, 1, 12, 0, 15, 0, time.UTC)
	r := traffic.NewWithClock(func() time.Time { return now })

	hello := r.Series("hello") // kept with the function's route
	for i := range 10 {
		hello.Observe(now.Add(-10*time.Second), 200, time.Duration(i+1)*time.Millisecond)
	}
	hello.Observe(now.Add(-2*time.Second), 503, 30*time.Second)
	hello.Observe(now, 499, 800*time.Millisecond)

	snap, err := r.Snapshot([]string{"hello", "idle"}, 20*time.Second, 10*time.Second)
	if err != nil {
		fmt.Println(err) // errors.Is(err, traffic.ErrBadWindow): 400
		return
	}
	for _, fs := range snap.Functions {
		t := fs.Total
		fmt.Printf("%s: %d requests, %d errors, %d client errors, %.2f/s, p50 %vms, p99 %vms\n",
			fs.Name, t.Requests, t.Errors, t.ClientErrors, t.Rate, t.P50, t.P99)
		for _, p := range fs.Series {
			fmt.Printf("  %s %d requests %.1f/s\n", p.Time.Format(time.TimeOnly), p.Requests, p.Rate)
		}
	}

	_, err = r.Snapshot([]string{"hello"}, 20*time.Second, 3*time.Second)
	fmt.Println(err)
	// Output:
	// hello: 12 requests, 1 errors, 1 client errors, 0.80/s, p50 6.061ms, p99 30000ms
	//   12:00:00 10 requests 1.0/s
	//   12:00:10 2 requests 0.4/s
	// idle: 0 requests, 0 errors, 0 client errors, 0.00/s, p50 0ms, p99 0ms
	//   12:00:00 0 requests 0.0/s
	//   12:00:10 0 requests 0.0/s
	// bad stats window: window 20s is not a multiple of step 3s
}

// Two gateways each count the requests they answered; the counts of one
// travel to the other as JSON and merge, and the figures read from them
// are those of every request: the p99 of all (exactly 2s, read within a
// bucket of it), not an average of p99s.
func ExampleCounts_Merge() {
	now := time.Date(2026, 3, 1, 12, 0, 15, 0, time.UTC)
	clock := func() time.Time { return now }
	a, b := traffic.NewWithClock(clock), traffic.NewWithClock(clock)
	for i := range 98 {
		a.Series("hello").Observe(now.Add(-5*time.Second), 200, time.Duration(i%10+1)*time.Millisecond)
	}
	b.Series("hello").Observe(now.Add(-5*time.Second), 503, 2*time.Second)
	b.Series("hello").Observe(now.Add(-5*time.Second), 200, 3*time.Second)

	mine, err := a.Counts([]string{"hello"}, 20*time.Second, 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	theirs, err := b.Counts([]string{"hello"}, 20*time.Second, 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	wire, err := json.Marshal(theirs) // a gateway's reply
	if err != nil {
		fmt.Println(err)
		return
	}
	var received traffic.Counts
	if err := json.Unmarshal(wire, &received); err != nil { // checked: errors.Is(err, traffic.ErrBadCounts)
		fmt.Println(err)
		return
	}
	if err := mine.Merge(&received); err != nil {
		fmt.Println(err)
		return
	}
	snap := mine.Snapshot()
	t := snap.Functions[0].Total
	fmt.Printf("%d gateways: %s %d requests, %d errors, p50 %vms, p99 %vms\n", snap.Gateways, snap.Functions[0].Name, t.Requests, t.Errors, t.P50, t.P99)
	// Output:
	// 2 gateways: hello 100 requests, 1 errors, p50 5.361ms, p99 2005.375ms
}
