package pbwire

import (
	"math/rand/v2"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"google.golang.org/protobuf/proto"
)

// TestSettleMatchesProtobuf encodes random acks and nacks and checks that
// protobuf decodes each into the message the generated types would have
// sent.
func TestSettleMatchesProtobuf(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for i := range 500 {
		s := &Settle{SubscriptionID: pick(r, nil, []byte("$ce-customer::group"))}
		var ids []*shared.UUID
		for range pick(r, 0, 1, 15, 300) {
			id := randomID(r)
			s.IDs = append(s.IDs, id)
			ids = append(ids, structured(id))
		}
		want := &persistent.ReadReq{Content: &persistent.ReadReq_Ack_{Ack: &persistent.ReadReq_Ack{Id: s.SubscriptionID, Ids: ids}}}
		if r.IntN(2) == 0 {
			s.Nack, s.Action, s.Reason = true, pick(r, persistent.ReadReq_Nack_Unknown, persistent.ReadReq_Nack_Park, persistent.ReadReq_Nack_Retry), pick(r, "", "bad event: ünïcode")
			want.Content = &persistent.ReadReq_Nack_{Nack: &persistent.ReadReq_Nack{Id: s.SubscriptionID, Ids: ids, Action: s.Action, Reason: s.Reason}}
		}
		data, err := Codec{}.Marshal(s)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		var got persistent.ReadReq
		if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
			t.Fatalf("message %d: protobuf cannot decode it: %v", i, err)
		}
		if !proto.Equal(&got, want) {
			t.Fatalf("message %d:\n got %v\nwant %v", i, &got, want)
		}
		data.Free()
	}
	if _, err := (Codec{}).Marshal(&Settle{Nack: true, Reason: "bad\xff"}); err == nil {
		t.Fatal("a nack reason that is not UTF-8 was encoded; protobuf refuses it")
	}
}
