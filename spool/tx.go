package spool

import bolt "go.etcd.io/bbolt"

type bboltTx = *bolt.Tx

func listQuarantine(tx *bolt.Tx, rep *Report) error {
	qb := tx.Bucket(bktQuar)
	if qb == nil {
		return nil
	}
	return qb.ForEach(func(k, v []byte) error {
		if id, ok := keyID(k); ok {
			rep.Quarantine = append(rep.Quarantine, decodeQuarantine(id, v))
		}
		return nil
	})
}
