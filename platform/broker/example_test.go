package broker_test

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/shoal-dev/shoal/platform/broker"
)

func ExampleStart() {
	dir, err := os.MkdirTemp("", "shoal-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	s, err := broker.Start(broker.Config{
		Addr:       "127.0.0.1:0", // a free port
		DataDir:    dir,           // JetStream stores under dir/jetstream
		MaxPayload: 9 << 20,       // room for 8 MiB bodies plus headers
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Shutdown()
	fmt.Println("clients connect to a nats:// URL:", s.ClientURL()[:7] == "nats://")
	// Output: clients connect to a nats:// URL: true
}
