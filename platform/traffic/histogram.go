package traffic

import (
	"math"
	"math/bits"
	"time"
)

// Latency buckets: log-spaced bounds from FirstBound up, each BucketRatio
// times the one before, plus an underflow bucket below FirstBound and an
// overflow bucket above the last bound (about 63.5s; a function may run
// up to 15 minutes). Bucket i, for 1 <= i < numBounds, holds durations in
// [bound[i-1], bound[i]); bucket 0 those under bound[0]; the last one
// those from bound[numBounds-1] on.
const (
	// FirstBound is the lower bound of the first latency bucket above
	// underflow.
	FirstBound = 50 * time.Microsecond
	// BucketRatio is the ratio of a latency bucket's upper bound to its
	// lower bound, the worst-case factor between a percentile read from
	// the histogram and the true one (see Figures).
	BucketRatio = 1.25
	numBounds   = 64
	numBuckets  = numBounds + 1
)

// bound holds the bucket bounds in nanoseconds, rounded.
var bound [numBounds]int64

// firstAbove[L] is the number of bounds under 1<<(L-1): every duration of
// bit length L is at least 1<<(L-1), so it belongs to bucket firstAbove[L]
// or, since a factor of 2 spans at most 4 bounds (1.25^3 < 2 < 1.25^4),
// one of the next 4.
var firstAbove [65]uint8

func init() {
	for i := range bound {
		bound[i] = int64(math.Round(float64(FirstBound) * math.Pow(BucketRatio, float64(i))))
	}
	for l := 1; l < len(firstAbove); l++ {
		low := uint64(1) << (l - 1)
		n := 0
		for n < numBounds && uint64(bound[n]) < low {
			n++
		}
		firstAbove[l] = uint8(n)
	}
}

// bucketOf returns the bucket of a duration: the number of bounds at or
// under it. A few comparisons, no logarithm: this runs on every request.
func bucketOf(d time.Duration) int {
	if d < FirstBound {
		return 0
	}
	i := int(firstAbove[bits.Len64(uint64(d))])
	for i < numBounds && int64(d) >= bound[i] {
		i++
	}
	return i
}

// micros returns d in whole microseconds, saturated to a uint32 (71
// minutes), rounded down (down) or up (!down), so that a minimum rounds
// down and a maximum up and both still bracket the true values.
func micros(d time.Duration, down bool) uint32 {
	if d <= 0 {
		return 0
	}
	us := d / time.Microsecond
	if !down && d%time.Microsecond != 0 {
		us++
	}
	return uint32(min(us, math.MaxUint32))
}

// hist is the merged histogram of a period: some one-second slots.
type hist struct {
	counts       [numBuckets]uint64
	requests     uint64
	errors       uint64
	clientErrors uint64
	// minMicros and maxMicros bracket the durations observed, once seen.
	minMicros, maxMicros uint32
	seen                 bool
}

// addSlot adds one second's counts, but not to requests: sum sets it once
// all are added. The slot is not empty: Observe resets a slot only to
// count a request in it.
func (h *hist) addSlot(sl *slot) {
	for i, c := range &sl.counts {
		h.counts[i] += uint64(c)
	}
	h.addRange(sl.minMicros, sl.maxMicros)
	h.errors += uint64(sl.errors)
	h.clientErrors += uint64(sl.clientErrors)
}

// sum sets requests to the sum of the counts.
func (h *hist) sum() {
	h.requests = 0
	for _, c := range &h.counts {
		h.requests += c
	}
}

// add adds the counts of another period.
func (h *hist) add(o *hist) {
	if o.requests == 0 {
		return
	}
	for i, c := range &o.counts {
		h.counts[i] += c
	}
	h.requests += o.requests
	h.addRange(o.minMicros, o.maxMicros)
	h.errors += o.errors
	h.clientErrors += o.clientErrors
}

// addRange widens [minMicros, maxMicros] to [lo, hi].
func (h *hist) addRange(lo, hi uint32) {
	if !h.seen || lo < h.minMicros {
		h.minMicros = lo
	}
	if !h.seen || hi > h.maxMicros {
		h.maxMicros = hi
	}
	h.seen = true
}

// figures returns the period's figures; seconds is its length, for Rate.
func (h *hist) figures(seconds float64) Figures {
	f := Figures{Requests: h.requests, Errors: h.errors, ClientErrors: h.clientErrors}
	if h.requests == 0 {
		return f
	}
	f.Rate = float64(h.requests) / seconds
	f.ErrorRate = float64(h.errors) / float64(h.requests)
	f.P50, f.P99 = h.percentiles(50, 99)
	return f
}

// percentiles returns the p1th and p2th percentiles (p1 <= p2, in
// percent) in milliseconds, to the microsecond, walking the buckets once.
//
// The pth percentile is the duration of rank ceil(p*n/100) (nearest
// rank). Its bucket is known from the counts; inside it, the c durations
// are taken as spread evenly on a log scale (linearly in the underflow
// bucket), the jth at (j-0.5)/c of the way, the bucket narrowed to the
// minimum and maximum observed; the last rank reads the maximum and the
// first the minimum. The true value lies in the same bucket, so the two
// differ by less than BucketRatio (except under FirstBound and over the
// last bound, where only the minimum and maximum bound them), and by less
// than its square root (11.8%) when the bucket holds one request.
func (h *hist) percentiles(p1, p2 uint64) (v1, v2 float64) {
	n := h.requests
	// The rank ceil(p*n/100), without computing p*n, which overflows
	// past 2^64/100 requests (counts merged from many gateways).
	rank := func(p uint64) uint64 { return max(n/100*p+(n%100*p+99)/100, 1) }
	k1, k2 := rank(p1), rank(p2)
	var cum uint64
	for i, c := range &h.counts {
		if c == 0 {
			continue
		}
		before := cum
		cum += c
		if before < k1 && k1 <= cum {
			v1 = h.value(i, k1, before, c)
		}
		if k2 <= cum {
			return v1, h.value(i, k2, before, c)
		}
	}
	return v1, v2 // not reached: cum ends at n >= k2
}

// value returns the duration of rank k, in bucket i after the before
// first ones, with c others, in milliseconds to the microsecond.
func (h *hist) value(i int, k, before, c uint64) float64 {
	switch k {
	case h.requests:
		return float64(h.maxMicros) / 1e3
	case 1:
		return float64(h.minMicros) / 1e3
	}
	lo, hi := 0.0, math.Inf(1)
	if i > 0 {
		lo = float64(bound[i-1])
	}
	if i < numBounds {
		hi = float64(bound[i])
	}
	lo = max(lo, float64(h.minMicros)*1e3)
	hi = min(hi, float64(h.maxMicros)*1e3)
	hi = max(hi, lo) // µs rounding of min and max
	f := (float64(k-before) - 0.5) / float64(c)
	ns := lo + (hi-lo)*f
	if i > 0 {
		ns = lo * math.Pow(hi/lo, f)
	}
	return math.Round(ns/1e3) / 1e3
}
