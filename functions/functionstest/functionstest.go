// Package functionstest provides functions that misbehave on purpose
// (panic, sleep past their timeout, answer too much, block) for tests of
// the platform's failure handling, next to the real built-ins.
package functionstest

import (
	"maps"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/functions"
)

// Builtins returns the real built-in functions plus:
//
//   - teapot answers 418 with an X-Teapot header and tries to set a
//     reserved Shoal-Status header;
//   - panic panics;
//   - sleep sleeps for the duration in its query parameter d, or until its
//     context ends;
//   - big answers n zero bytes (query parameter n).
//
// extra adds or replaces functions.
func Builtins(extra map[string]http.Handler) map[string]http.Handler {
	fns := functions.Builtins(functions.Deps{})
	fns["teapot"] = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Teapot", "short and stout")
		w.Header().Set("Shoal-Status", "200") // reserved: must not leak into the reply
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte("I'm a teapot"))
	})
	fns["panic"] = http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })
	fns["sleep"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
			_, _ = w.Write([]byte("slept " + d.String()))
		case <-r.Context().Done():
		}
	})
	fns["big"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		_, _ = w.Write(make([]byte, n))
	})
	maps.Copy(fns, extra)
	return fns
}

// Block is a function that runs until Release is closed, to hold
// concurrency slots or keep an invocation in flight.
type Block struct {
	// Started receives a value as each invocation starts.
	Started chan struct{}
	// Release, once closed, lets every invocation answer.
	Release chan struct{}
}

// NewBlock returns a Block with room to report 1000 starts.
func NewBlock() *Block {
	return &Block{Started: make(chan struct{}, 1000), Release: make(chan struct{})}
}

// ServeHTTP reports the start, waits for Release and answers "released".
func (b *Block) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	b.Started <- struct{}{}
	<-b.Release
	_, _ = w.Write([]byte("released"))
}

// Counter is a function that counts its invocations and answers "counted".
type Counter struct{ N atomic.Int64 }

// ServeHTTP counts the invocation and answers "counted".
func (c *Counter) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c.N.Add(1)
	_, _ = w.Write([]byte("counted"))
}
