package spool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/forestwatch/forest/spool"
)

// The agent's use: the capture side Puts frames, the uplink side waits for
// records, takes a batch, publishes it, Acks what the broker confirmed and
// Releases the rest for a retry.
func Example() {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	q, err := spool.Open(dir, spool.Options{MaxBytes: 1 << 30, MinFreeBytes: 256 << 20})
	if err != nil {
		log.Fatal(err) // errors.Is(err, spool.ErrInUse): another agent runs
	}
	defer q.Close()
	ctx := context.Background()

	// Capture: forest coverage as priority, so that forest outlives bare soil.
	for i, coverage := range []int{80, 5, 60} {
		_, err := q.Put(ctx, &spool.Record{
			Priority: coverage,
			Image:    []byte("jpeg bytes"),
			Mask:     []byte("png bytes"),
			Meta:     fmt.Appendf(nil, `{"image_name":"tile-%d.jpg"}`, i),
		})
		if errors.Is(err, spool.ErrFull) {
			continue // counted in Stats.Rejected
		}
		if err != nil {
			log.Fatal(err)
		}
	}

	// Uplink.
	if err := q.Wait(ctx); err != nil {
		log.Fatal(err)
	}
	batch, err := q.Next(64)
	if err != nil {
		log.Fatal(err)
	}
	var confirmed, refused []uint64
	for _, r := range batch {
		if r.ID == 2 { // say the broker nacked this one
			refused = append(refused, r.ID)
			continue
		}
		confirmed = append(confirmed, r.ID)
	}
	if err := q.Ack(confirmed...); err != nil {
		log.Fatal(err)
	}
	q.Release(refused...)

	st := q.Stats()
	fmt.Println("confirmed", confirmed, "stored", st.Frames, "in flight", st.InFlight)
	// Output: confirmed [1 3] stored 1 in flight 0
}
