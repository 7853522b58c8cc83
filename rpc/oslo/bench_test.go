package oslo_test

import (
	"context"
	"testing"

	"opendev.org/x/ferry/rpc/oslo"
	"opendev.org/x/ferry/rpc/oslo/oslotest"
)

// BenchmarkCall measures what one call costs the server (and the in-memory
// broker): the bench-rpc call, decoded, served by a no-op, answered.
func BenchmarkCall(b *testing.B) {
	br := oslotest.New()
	log, _ := newLog()
	srv, err := oslo.NewServer(oslo.ServerOptions{Transport: br.Transport(vh), Server: "h1", NoFanout: true, Log: log},
		handlers(map[string]func(context.Context, *oslo.Request) (any, error){
			"noop": func(context.Context, *oslo.Request) (any, error) { return nil, nil },
		}))
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	<-srv.Ready()
	_, replies := listen(b, br, oslo.Declaration{Queue: "reply_b"}, oslo.ConsumeOptions{Tag: "r", AutoAck: true})
	body := []byte(`{"oslo.version": "2.0", "oslo.message": "{\"method\": \"noop\", \"args\": {}, \"version\": \"6.0\", \"_msg_id\": \"659bd8495c1948dbbf549e1ea8ab133f\", \"_reply_q\": \"reply_b\", \"_timeout\": null, \"_unique_id\": \"\"}"}`)
	p := oslo.Publishing{Exchange: "nova", Key: "compute.h1", Body: body,
		Properties: oslo.Properties{ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: 2}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := br.Publish(vh, p); err != nil {
			b.Fatal(err)
		}
		<-replies
	}
	b.StopTimer()
	_ = srv.Shutdown(context.Background())
	<-served
}
