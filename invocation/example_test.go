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
