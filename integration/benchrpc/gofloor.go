package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"opendev.org/x/ferry/config"
)

// serveGoFloor is the Go floor: a raw amqp091-go server on
// compute.bench-gofloor with ferry's semantics and nothing else. It reads
// each call's reply address from the envelope, publishes a canned reply
// through the default exchange (mandatory, with a message_id, on a
// confirm-mode channel), waits for the broker's confirm, then acks the
// call, one goroutine per call, with the prefetch and GOMAXPROCS ferry
// runs with. What ferry's server spends beyond it is the price of
// rpc/oslo itself. (This tool is the one place besides rpc/oslo/amqp.go
// that imports amqp091-go: the floor must not go through rpc/oslo.)
func serveGoFloor(host, user, password, vhost string) error {
	config.Default().ApplyMaxProcs()
	conn, err := amqp.DialConfig(fmt.Sprintf("amqp://%s/", host), amqp.Config{
		SASL: []amqp.Authentication{&amqp.PlainAuth{Username: user, Password: password}}, Vhost: vhost})
	if err != nil {
		return err
	}
	defer conn.Close()
	in, err := conn.Channel()
	if err != nil {
		return err
	}
	out, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := out.Confirm(false); err != nil {
		return err
	}
	const q = "compute.bench-gofloor"
	if err := in.ExchangeDeclare("nova", "topic", false, false, false, false, nil); err != nil {
		return err
	}
	if _, err := in.QueueDeclare(q, false, false, false, false, nil); err != nil {
		return err
	}
	if err := in.QueueBind(q, q, "nova", false, nil); err != nil {
		return err
	}
	if err := in.Qos(64+16, 0, false); err != nil {
		return err
	}
	ds, err := in.Consume(q, "1", false, false, false, false, nil)
	if err != nil {
		return err
	}
	fmt.Println("READY")
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(io.Discard, os.Stdin); _ = conn.Close() }) // EOF on stdin stops the floor
	n := 0
	for d := range ds { // ends when the connection closes
		n++
		wg.Go(func() { answer(out, d, n) })
	}
	wg.Wait()
	return nil
}

func answer(out *amqp.Channel, d amqp.Delivery, n int) {
	var env struct {
		Msg string `json:"oslo.message"`
	}
	var call struct {
		MsgID  string `json:"_msg_id"`
		ReplyQ string `json:"_reply_q"`
	}
	if json.Unmarshal(d.Body, &env) != nil || json.Unmarshal([]byte(env.Msg), &call) != nil {
		_ = d.Reject(false)
		return
	}
	inner, _ := json.Marshal(map[string]any{"result": nil, "failure": nil, "ending": true, "_msg_id": call.MsgID})
	body, _ := json.Marshal(map[string]string{"oslo.version": "2.0", "oslo.message": string(inner)})
	dc, err := out.PublishWithDeferredConfirmWithContext(context.Background(), "", call.ReplyQ, true, false, amqp.Publishing{
		ContentType: "application/json", ContentEncoding: "utf-8", DeliveryMode: amqp.Persistent, Headers: amqp.Table{},
		MessageId: fmt.Sprint(n), Body: body})
	if err == nil && dc.Wait() {
		_ = d.Ack(false)
		return
	}
	_ = d.Nack(false, true)
}
