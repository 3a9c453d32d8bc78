package callback_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"time"

	"github.com/shoal-dev/shoal/platform/callback"
)

func ExamplePolicy_CheckURL() {
	// As from --callback-allow=10.0.0.0/8 --callback-allow='*.svc.cluster.local'.
	policy, err := callback.ParsePolicy([]string{"10.0.0.0/8", "*.svc.cluster.local"})
	if err != nil {
		log.Fatal(err)
	}
	for _, raw := range []string{
		"https://hooks.example.com/done?sig=abc",
		"http://10.1.2.3:8080/done",
		"http://results.default.svc.cluster.local/done",
		"http://169.254.169.254/latest/meta-data/",
		"ftp://files.example.com/",
	} {
		if _, err := policy.CheckURL(raw); err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Println("accepted:", callback.Redact(raw))
	}
	// Output:
	// accepted: https://hooks.example.com/done
	// accepted: http://10.1.2.3:8080/done
	// accepted: http://results.default.svc.cluster.local/done
	// callback URL "http://169.254.169.254/latest/meta-data/": address not allowed: 169.254.169.254 is not a public address (link-local); to allow it, add --callback-allow=169.254.169.254 or a CIDR prefix that contains it
	// callback URL "ftp://files.example.com/": the scheme must be http or https
}

func ExampleDeliver() {
	policy, err := callback.ParsePolicy(nil) // public addresses only
	if err != nil {
		log.Fatal(err)
	}
	client := policy.Client(10 * time.Second) // one per process; it pools connections

	// In the JetStream consumer, for each finished call with a callback URL:
	url, record := "https://hooks.example.com/done?sig=abc", []byte(`{"id":"c-42","status":200}`)
	err = callback.Deliver(context.Background(), client, url, http.Header{"X-Shoal-Call-Id": {"c-42"}}, record)
	switch {
	case err == nil:
		// Ack the message.
	case callback.Retryable(err):
		// Nak it with a delay, until the attempts run out.
		slog.Warn("callback failed, will retry", "url", callback.Redact(url), "err", err)
	default:
		// Term it: trying again cannot help.
		slog.Error("callback failed", "url", callback.Redact(url), "err", err)
	}
}
