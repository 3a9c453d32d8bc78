package calls_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/calls"
)

// A gateway submits a call and answers with its id at once; anyone with
// the id reads the call's record until a runner settles it.
func ExampleQueue_Submit() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// shoal deploy and shoal up do this.
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		fmt.Println(err)
		return
	}

	q := calls.NewQueue(js)
	msg := nats.NewMsg("") // as invocation.NewRequestMsg builds it from an HTTP request
	msg.Header.Set("Shoal-Method", "POST")
	msg.Data = []byte(`{"order": 42}`)
	sub, err := q.Submit(ctx, calls.Submission{Function: "resize", Msg: msg, IdempotencyKey: "order-42", Principal: "alice"})
	if err != nil {
		fmt.Println(err)
		return
	}
	rec, err := q.Get(ctx, sub.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rec.Function, rec.Status, rec.Attempts)

	// The same key from the same caller names the same call.
	again, err := q.Submit(ctx, calls.Submission{Function: "resize", Msg: nats.NewMsg(""), IdempotencyKey: "order-42", Principal: "alice"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(again.ID == sub.ID, again.Duplicate)
	// Output:
	// resize queued 0
	// true true
}

// A console lists the calls changed most recently, newest change first,
// of every function or of one.
func ExampleQueue_Recent() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := calls.Setup(ctx, js, calls.DefaultLimits()); err != nil {
		fmt.Println(err)
		return
	}

	q := calls.NewQueue(js)
	for _, function := range []string{"resize", "thumbnail", "resize"} {
		if _, err := q.Submit(ctx, calls.Submission{Function: function, Msg: nats.NewMsg("")}); err != nil {
			fmt.Println(err)
			return
		}
	}
	for _, function := range []string{"", "resize"} {
		l, err := q.Recent(ctx, 50, function)
		if err != nil {
			fmt.Println(err)
			return
		}
		var list []string
		for _, r := range l.Records {
			list = append(list, r.Function+" "+string(r.Status))
		}
		fmt.Println(strings.Join(list, ", "))
	}
	// Output:
	// resize queued, thumbnail queued, resize queued
	// resize queued, resize queued
}
