package traffic

import (
	"math"
	"testing"
	"time"
	"unsafe"
)

func TestBounds(t *testing.T) {
	if bound[0] != int64(FirstBound) {
		t.Errorf("first bound %d, want %d", bound[0], FirstBound)
	}
	if last := time.Duration(bound[numBounds-1]); last < time.Minute {
		t.Errorf("last bound %s, want 1m or more", last)
	}
	for i := 1; i < numBounds; i++ {
		if r := float64(bound[i]) / float64(bound[i-1]); r > BucketRatio*1.0001 || r < 1.2 {
			t.Errorf("bound %d / bound %d = %.4f, want about %v", i, i-1, r, BucketRatio)
		}
	}
}

// bucketOf must agree with the definition: the number of bounds at or
// under d.
func TestBucketOf(t *testing.T) {
	want := func(d time.Duration) int {
		n := 0
		for _, b := range bound {
			if int64(d) >= b {
				n++
			}
		}
		return n
	}
	ds := []time.Duration{math.MinInt64, -1, 0, 1, time.Microsecond, FirstBound - 1, 15 * time.Minute, math.MaxInt64}
	for _, b := range bound {
		ds = append(ds, time.Duration(b-1), time.Duration(b), time.Duration(b+1))
	}
	for l := range 63 {
		ds = append(ds, time.Duration(1)<<l, time.Duration(1)<<l-1)
	}
	for d := time.Duration(1); d < time.Hour; d = d*17/16 + 1 {
		ds = append(ds, d)
	}
	for _, d := range ds {
		if got, w := bucketOf(d), want(d); got != w {
			t.Errorf("bucketOf(%d) = %d, want %d", d, got, w)
		}
	}
}

func TestMicros(t *testing.T) {
	tests := []struct {
		name     string
		d        time.Duration
		down, up uint32
	}{
		{"negative", -time.Second, 0, 0},
		{"zero", 0, 0, 0},
		{"under a microsecond", 1, 0, 1},
		{"whole", 7 * time.Millisecond, 7000, 7000},
		{"between", 7*time.Millisecond + 1, 7000, 7001},
		{"saturated", 100 * time.Hour, math.MaxUint32, math.MaxUint32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if down, up := micros(tt.d, true), micros(tt.d, false); down != tt.down || up != tt.up {
				t.Errorf("micros(%s) = %d, %d; want %d, %d", tt.d, down, up, tt.down, tt.up)
			}
		})
	}
}

// The package doc states the memory of a series; this keeps it true.
func TestRingSize(t *testing.T) {
	if s := unsafe.Sizeof(slot{}); s != 280 {
		t.Errorf("slot is %d bytes; the package doc says 280", s)
	}
	if s := unsafe.Sizeof([ringSize]slot{}); s != 168000 {
		t.Errorf("ring is %d bytes; the package doc says 168,000", s)
	}
}

// A ring idle for MaxWindow is released by Snapshot and Retain, and made
// again by the next observation.
func TestReleaseIdle(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := NewWithClock(func() time.Time { return now })
	s := r.Series("f")
	s.Observe(now, 200, time.Millisecond)
	ring := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.slots != nil
	}

	now = now.Add(MaxWindow - time.Second)
	if _, err := r.Snapshot([]string{"f"}, MaxWindow, time.Minute); err != nil || !ring() {
		t.Fatalf("ring released before MaxWindow idle (err %v)", err)
	}
	r.Retain([]string{"f"})
	if !ring() {
		t.Fatal("Retain released a ring before MaxWindow idle")
	}
	now = now.Add(time.Second)
	if _, err := r.Snapshot([]string{"f"}, MaxWindow, time.Minute); err != nil || ring() {
		t.Fatalf("ring kept after MaxWindow idle (err %v)", err)
	}
	s.Observe(now, 200, time.Millisecond)
	if !ring() {
		t.Fatal("no ring after an observation")
	}
	now = now.Add(MaxWindow)
	r.Retain([]string{"f"})
	if ring() {
		t.Fatal("Retain kept a ring idle for MaxWindow")
	}
}

// TestPercentilesOfHugeCounts: counts merged from many gateways can pass
// 2^64/100 requests, where p*n would overflow; the ranks must not.
func TestPercentilesOfHugeCounts(t *testing.T) {
	var h hist
	h.counts[10], h.counts[40] = 1<<61, 1<<58 // p50 in bucket 10, p99 in bucket 40
	h.requests = h.counts[10] + h.counts[40]
	h.minMicros, h.maxMicros, h.seen = 60, 10_000_000, true
	p50, p99 := h.percentiles(50, 99)
	lo, hi := float64(bound[9])/1e6, float64(bound[10])/1e6
	if p50 < lo || p50 > hi {
		t.Errorf("p50 %v ms, want within bucket 10, [%v, %v] ms", p50, lo, hi)
	}
	if lo, hi := float64(bound[39])/1e6, float64(bound[40])/1e6; p99 < lo || p99 > hi {
		t.Errorf("p99 %v ms, want within bucket 40, [%v, %v] ms", p99, lo, hi)
	}
}
