package invocation_test

import (
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// A NATS client invokes a function without the gateway: one request on the
// function's subject, with the HTTP details in headers.
func Example() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		fmt.Println("no NATS server here:", err)
		return
	}
	defer nc.Close()

	msg := nats.NewMsg(invocation.Subject("echo"))
	msg.Header.Set(invocation.HeaderMethod, "PUT")
	msg.Header.Set(invocation.HeaderPath, "/items/42")
	msg.Header.Set(invocation.HeaderQuery, "verbose=1")
	msg.Header.Set("Content-Type", "application/json")
	msg.Data = []byte(`{"name":"shoal"}`)

	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		fmt.Println("invoke:", err) // nats.ErrNoResponders: no runner serves echo
		return
	}
	status, err := invocation.ReadReply(http.Header{}, reply.Header)
	if err != nil {
		fmt.Println(err)
		return
	}
	if status >= 400 {
		if e, ok := invocation.ParseError(status, reply.Data); ok {
			fmt.Println("failed:", e.Code, e.Message)
			return
		}
	}
	fmt.Println(status, string(reply.Data))
}

func ExampleErrorf() {
	e := invocation.Errorf(504, invocation.CodeTimeout, "function %q did not answer within its timeout of %s", "resize", 30*time.Second)
	fmt.Print(string(e.Body()))
	// Output: {"error":{"code":"timeout","message":"function \"resize\" did not answer within its timeout of 30s"}}
}

// A caller that asks for an ack reads its reply subject until the answer:
// the ack comes first and names the runner that took the invocation.
func ExampleReadAck() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		fmt.Println("no NATS server here:", err)
		return
	}
	defer nc.Close()
	replies, err := nc.SubscribeSync(nc.NewInbox())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer replies.Unsubscribe()

	msg := nats.NewMsg(invocation.Subject("ping"))
	msg.Header.Set(invocation.HeaderAck, invocation.AckRequested)
	msg.Reply = replies.Subject
	if err := nc.PublishMsg(msg); err != nil {
		fmt.Println(err)
		return
	}
	for {
		reply, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			fmt.Println("invoke:", err)
			return
		}
		if runner, ok := invocation.ReadAck(reply); ok {
			fmt.Println("running on runner", runner)
			continue
		}
		if len(reply.Data) == 0 && reply.Header.Get("Status") == "503" {
			fmt.Println("no runner serves ping") // the NATS server's no-responders notice
			return
		}
		fmt.Println(string(reply.Data))
		return
	}
}

// A hop keeps the caller's request id and trace, starts a span of its
// own, and hands both on to the next hop.
func ExampleStartTrace() {
	incoming := http.Header{
		"X-Request-Id": {"order-42"},
		"Traceparent":  {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	tr := invocation.StartTrace(incoming)
	fmt.Println(tr.RequestID(), tr.TraceID(), tr.ParentID(), tr.Sampled())

	next := nats.Header{}
	tr.Apply(next) // X-Request-Id, and a traceparent naming this hop's span
	fmt.Println(next.Get("Traceparent") == "00-"+tr.TraceID()+"-"+tr.SpanID()+"-01")

	answer := http.Header{}
	tr.SetResponse(answer) // X-Request-Id and traceresponse, this hop's span
	fmt.Println(answer.Get("X-Request-Id"), answer.Get("Traceresponse") == tr.Traceparent())
	// Output:
	// order-42 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 true
	// true
	// order-42 true
}
