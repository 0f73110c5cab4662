package esdbtest

import "github.com/google/uuid"

// writeSystemEvents gives a fresh store what a real server writes at first
// start (§8): the default users and their $users index, and an epoch
// record, so that $users and $all are never empty. The official client
// suite waits for an event in $users before running anything.
func (s *Store) writeSystemEvents() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.begin()
	sys := func(stream, typ string, isJSON bool, data string) {
		st := s.stream(stream)
		rec := s.newRecord()
		rec.Stream = st.name
		rec.Number = st.last() + 1
		rec.ID = s.newID()
		rec.Type = typ
		rec.IsJSON = isJSON
		rec.Data = s.keep([]byte(data))
		s.add(rec)
	}
	sys("$epoch-information", "$epoch", true, `{"epochNumber":0,"epochPosition":0,"epochId":"`+uuid.NewString()+`"}`)
	sys("$user-admin", "$UserCreated", true, `{"loginName":"admin","fullName":"KurrentDB Administrator","groups":["$admins"]}`)
	sys("$user-ops", "$UserCreated", true, `{"loginName":"ops","fullName":"KurrentDB Operations","groups":["$ops"]}`)
	sys("$users", linkType, false, "0@$user-admin")
	sys("$users", linkType, false, "0@$user-ops")
	return s.commit()
}
