// Package traffic keeps live figures of each function's requests over the
// last minutes: requests per second, error rate, p50 and p99 latency, for
// the gateway's GET /system/stats and the console that charts them.
//
// The gateway observes every synchronous invocation it answers into the
// function's Series (status and duration); Recorder.Snapshot reads the
// figures of a window ending now, in steps. Everything is in memory and
// per process: figures start from zero when the gateway starts, and each
// gateway of a cluster counts its own requests.
//
// # Several gateways
//
// Recorder.Counts reads the raw counts behind the figures instead:
// requests, errors and latency histograms per step, which add up. The
// gateways exchange them (as JSON, checked on decoding) and Merge them,
// and Counts.Snapshot reads the figures of all their requests, exactly as
// one recorder that had observed them all would: percentiles come from
// the merged histograms. Snapshot is Counts then Counts.Snapshot: one
// path for the figures.
//
// # Slots
//
// A series keeps one slot per second in a ring of 600 (MaxWindow). A slot
// holds the second it belongs to, its request counts and a latency
// histogram of 65 buckets: 63 log-spaced from FirstBound (50µs) to about
// 63.5s, each BucketRatio (1.25) times the one before, an underflow and an
// overflow bucket, and the minimum and maximum duration. Rollover
// is lazy: a slot is reset when an observation of a later second lands on
// it, and a read takes a slot only if its second is the one wanted, so a
// stale slot reads as empty. No goroutine runs in the background.
//
// # Memory
//
// A series allocates its ring on its first observation: 600 slots of 280
// bytes, 168,000 bytes (about 164 KiB) per function observed in the last
// 10 minutes, 156,000 of them the histograms' uint32 counters. A ring
// idle for a whole MaxWindow is released by the next Snapshot or Counts
// that lists its function, or the next Retain.
//
// # Cost
//
// Observe takes the series' mutex once, finds the bucket with a few
// comparisons, reads the clock only for the first observation of each
// second and allocates nothing (BenchmarkObserve). Counts, and so
// Snapshot, merges the slots of the window per function, taking the mutex
// once per step so that observers wait for one step's merge at most
// (BenchmarkSnapshot, BenchmarkStatsReply).
package traffic

import (
	"math"
	"sync"
	"time"
)

// MaxWindow is the longest window a Snapshot reads, the span of the ring.
const MaxWindow = 10 * time.Minute

// ringSize is the number of one-second slots of a series.
const ringSize = int64(MaxWindow / time.Second)

// Recorder keeps, per function, one-second slots of the last MaxWindow.
// Its methods and those of its series are safe for concurrent use.
type Recorder struct {
	now    func() time.Time
	mu     sync.RWMutex
	series map[string]*Series
}

// New returns a Recorder on the real clock.
func New() *Recorder { return NewWithClock(time.Now) }

// NewWithClock returns a Recorder on the clock now, for tests. now must
// be safe for concurrent use.
func NewWithClock(now func() time.Time) *Recorder {
	return &Recorder{now: now, series: map[string]*Series{}}
}

// Series returns the function's series, making it on first use. The
// gateway keeps it with the function's route, so that its hot path does
// no map lookup. Call it for deployed functions only, never for a name a
// request makes up: each series observed holds 164 KiB.
func (r *Recorder) Series(function string) *Series {
	r.mu.RLock()
	s := r.series[function]
	r.mu.RUnlock()
	if s != nil {
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s = r.series[function]; s == nil {
		s = &Series{now: r.now}
		r.series[function] = s
	}
	return s
}

// Retain drops every series whose function is not in names: a function
// no longer deployed. Observations into a dropped series (requests still
// in flight) are lost, and a function deployed again starts from zero.
func (r *Recorder) Retain(names []string) {
	keep := make(map[string]bool, len(names))
	for _, n := range names {
		keep[n] = true
	}
	nowSec := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, s := range r.series {
		if !keep[name] {
			delete(r.series, name)
		} else {
			s.releaseIdle(nowSec)
		}
	}
}

// lookup returns the series of the functions named, nil for those with
// none.
func (r *Recorder) lookup(names []string) []*Series {
	out := make([]*Series, len(names))
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i, n := range names {
		out[i] = r.series[n]
	}
	return out
}

// Series is one function's ring of one-second slots, observed by the
// gateway once per request.
type Series struct {
	now func() time.Time
	mu  sync.Mutex
	// head is the latest second observed (Unix seconds), never ahead of
	// the clock by more than one second.
	head  int64
	slots *[ringSize]slot // nil until the first observation, or once idle
}

// slot holds the requests of one second, at least one: Observe resets a
// slot only to count a request in it. A slot never used holds second 0,
// which is never read.
type slot struct {
	sec          uint32 // Unix seconds; fits until 2106
	errors       uint32 // status >= 500
	clientErrors uint32 // status 400-499
	// minMicros and maxMicros bracket the durations of the second's
	// requests, rounded down and up to the microsecond.
	minMicros, maxMicros uint32
	counts               [numBuckets]uint32 // requests by latency bucket
}

// Observe records one answered request that ended at at, with its HTTP
// status (>= 500 counts as an error, 400-499 as a client error, 499 being
// the client gone) and duration. It allocates nothing but the ring, on the
// series' first observation.
//
// An observation later than the clock by more than a second (a caller's
// mistake) is counted at the clock's second instead: the request was
// answered, so it counts. One older than what its slot already holds, or
// older than the ring (MaxWindow before the latest second observed), is
// dropped, as is one before 1970 or after 2106. If the wall clock steps
// back, slots from its future are reset as they are reused and seconds
// recorded before the step may be counted twice.
func (s *Series) Observe(at time.Time, status int, d time.Duration) {
	sec := at.Unix()
	if sec <= 0 || sec > math.MaxUint32 {
		return
	}
	b := bucketOf(d)
	lo, hi := micros(d, true), micros(d, false)

	s.mu.Lock()
	if s.slots == nil {
		s.slots = new([ringSize]slot)
	}
	sl := &s.slots[sec%ringSize]
	if sec > s.head || sec <= s.head-ringSize || int64(sl.sec) > sec {
		// Rare: the first observation of a second, or a late one, or one
		// from the future. Only here is the clock read.
		if sec, sl = s.place(sec); sl == nil {
			s.mu.Unlock()
			return
		}
	}
	if int64(sl.sec) != sec {
		*sl = slot{sec: uint32(sec), minMicros: math.MaxUint32}
	}
	sl.counts[b]++
	if status >= 500 {
		sl.errors++
	} else if status >= 400 {
		sl.clientErrors++
	}
	sl.minMicros = min(sl.minMicros, lo)
	sl.maxMicros = max(sl.maxMicros, hi)
	s.mu.Unlock()
}

// place checks an observation of second sec against the clock and the
// ring, and returns the second to count it at and its slot, or a nil slot
// to drop it. It runs with s.mu held.
func (s *Series) place(sec int64) (int64, *slot) {
	now := s.now().Unix()
	if sec > now+1 {
		sec = now
	}
	if s.head > now+1 {
		s.head = now // the clock stepped back: forget its future
	}
	if sec > s.head {
		s.head = sec
	}
	sl := &s.slots[sec%ringSize]
	if sec <= s.head-ringSize || sec <= 0 {
		return 0, nil
	}
	if cur := int64(sl.sec); cur > sec && cur <= now+1 {
		return 0, nil // the slot holds a later second: sec is past the ring
	}
	return sec, sl
}

// releaseIdle drops the ring if nothing was observed in the MaxWindow up
// to nowSec.
func (s *Series) releaseIdle(nowSec int64) {
	s.mu.Lock()
	if s.head <= nowSec-ringSize {
		s.slots = nil
	}
	s.mu.Unlock()
}

// merge adds to h, empty, the slots of the seconds [from, to).
func (s *Series) merge(h *hist, from, to int64) {
	from = max(from, 1)
	s.mu.Lock()
	if s.slots != nil {
		for t := from; t < to; t++ {
			if sl := &s.slots[t%ringSize]; int64(sl.sec) == t {
				h.addSlot(sl)
			}
		}
	}
	s.mu.Unlock()
	h.sum()
}
