package store

import (
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"glimpse/api"
)

// Member statuses.
var memberStatuses = []string{"pending", "accepted", "rejected"}

func memberJSON(imageID, member, status, created, updated string) api.Member {
	return api.Member{ImageID: imageID, MemberID: member, Status: status, CreatedAt: created, UpdatedAt: updated, Schema: "/v2/schemas/member"}
}

// memberImage loads the image for a members call: 404 in the members API's words when the
// caller cannot see it.
func (s *Store) memberImage(r *http.Request, q querier, c Caller) (*record, error) {
	id := r.PathValue("id")
	rec, err := s.lookup(r.Context(), q, c, id)
	if errors.Is(err, errNoImage) {
		return nil, api.Errorf(http.StatusNotFound, "Image %s not found.", id)
	}
	return rec, err
}

func (s *Store) listMembers(w http.ResponseWriter, r *http.Request, c Caller) error {
	rec, err := s.memberImage(r, s.r, c)
	if err != nil {
		return err
	}
	if rec.Visibility != "shared" {
		return api.Errorf(http.StatusForbidden, "Not allowed to list members for image %s: Only shared images have members.", rec.ID)
	}
	q := "SELECT member, status, created_at, updated_at FROM members WHERE image_id = ?"
	args := []any{rec.ID}
	if !isOwner(c, rec) {
		// A member sees its own membership only.
		q += " AND member = ?"
		args = append(args, c.Project)
	}
	rows, err := s.r.QueryContext(r.Context(), q+" ORDER BY created_at, member", args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := struct {
		Members []api.Member `json:"members"`
		Schema  string       `json:"schema"`
	}{Members: []api.Member{}, Schema: "/v2/schemas/members"}
	for rows.Next() {
		var m, st, cr, up string
		if err := rows.Scan(&m, &st, &cr, &up); err != nil {
			return err
		}
		out.Members = append(out.Members, memberJSON(rec.ID, m, st, cr, up))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Store) createMember(w http.ResponseWriter, r *http.Request, c Caller) error {
	body, _, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var out api.Member
	err = s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.memberImage(r, tx, c)
		if err != nil {
			return err
		}
		raw, ok := body["member"]
		if !ok {
			return api.Errorf(http.StatusBadRequest, "Member to be added not specified")
		}
		var member string
		if json.Unmarshal(raw, &member) != nil {
			return api.Errorf(http.StatusBadRequest, "Member to be added not specified")
		}
		if member == "" {
			return api.Errorf(http.StatusBadRequest, "Member can't be empty")
		}
		if !isOwner(c, rec) || rec.Visibility != "shared" {
			return api.Errorf(http.StatusForbidden, "Not allowed to create members for image %s.", rec.ID)
		}
		var n int
		if err := tx.QueryRowContext(r.Context(), "SELECT count(*) FROM members WHERE image_id = ? AND member = ?", rec.ID, member).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return api.Errorf(http.StatusConflict, "Member %s is duplicated for image %s", member, rec.ID)
		}
		t := now()
		if _, err := tx.ExecContext(r.Context(), "INSERT INTO members (image_id, member, status, created_at, updated_at) VALUES (?,?,?,?,?)",
			rec.ID, member, "pending", t, t); err != nil {
			return err
		}
		out = memberJSON(rec.ID, member, "pending", t, t)
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// getMember loads one membership the caller may see (the owner sees all, a member its own).
func (s *Store) getMember(r *http.Request, q querier, c Caller, rec *record) (*api.Member, error) {
	member := r.PathValue("member")
	missing := api.Errorf(http.StatusNotFound, "%s not found in the member list of the image %s.", member, rec.ID)
	if !isOwner(c, rec) && member != c.Project {
		return nil, missing
	}
	var st, cr, up string
	err := q.QueryRowContext(r.Context(), "SELECT status, created_at, updated_at FROM members WHERE image_id = ? AND member = ?",
		rec.ID, member).Scan(&st, &cr, &up)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, missing
	}
	if err != nil {
		return nil, err
	}
	m := memberJSON(rec.ID, member, st, cr, up)
	return &m, nil
}

func (s *Store) showMember(w http.ResponseWriter, r *http.Request, c Caller) error {
	rec, err := s.memberImage(r, s.r, c)
	if err != nil {
		return err
	}
	m, err := s.getMember(r, s.r, c, rec)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, m)
}

func (s *Store) updateMember(w http.ResponseWriter, r *http.Request, c Caller) error {
	body, _, err := readJSONObject(r)
	if err != nil {
		return err
	}
	var out *api.Member
	err = s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.memberImage(r, tx, c)
		if err != nil {
			return err
		}
		raw, ok := body["status"]
		if !ok {
			return api.Errorf(http.StatusBadRequest, "Status not specified")
		}
		var status string
		if json.Unmarshal(raw, &status) != nil || !slices.Contains(memberStatuses, status) {
			return api.Errorf(http.StatusBadRequest, `Incorrect request: Status must be "pending", "accepted" or "rejected".`)
		}
		m, err := s.getMember(r, tx, c, rec)
		if err != nil {
			return err
		}
		// Only the member itself decides (Glance's modify_member rule).
		if m.MemberID != c.Project && !c.Admin {
			return api.Errorf(http.StatusForbidden, "Not allowed to update members for image %s.", rec.ID)
		}
		m.Status, m.UpdatedAt = status, now()
		if _, err := tx.ExecContext(r.Context(), "UPDATE members SET status = ?, updated_at = ? WHERE image_id = ? AND member = ?",
			m.Status, m.UpdatedAt, rec.ID, m.MemberID); err != nil {
			return err
		}
		out = m
		return nil
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Store) deleteMember(w http.ResponseWriter, r *http.Request, c Caller) error {
	err := s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.memberImage(r, tx, c)
		if err != nil {
			return err
		}
		m, err := s.getMember(r, tx, c, rec)
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return api.Errorf(http.StatusForbidden, "Not allowed to delete members for image %s.", rec.ID)
		}
		_, err = tx.ExecContext(r.Context(), "DELETE FROM members WHERE image_id = ? AND member = ?", rec.ID, m.MemberID)
		return err
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Store) addTag(w http.ResponseWriter, r *http.Request, c Caller) error {
	tag := r.PathValue("tag")
	if e := checkValue("tags", mustJSON([]string{tag})); e != nil {
		return e
	}
	return s.changeTag(w, r, c, func(tx *sql.Tx, rec *record) error {
		_, err := tx.ExecContext(r.Context(), "INSERT OR IGNORE INTO tags (image_id, tag) VALUES (?, ?)", rec.ID, tag)
		return err
	})
}

func (s *Store) deleteTag(w http.ResponseWriter, r *http.Request, c Caller) error {
	tag := r.PathValue("tag")
	return s.changeTag(w, r, c, func(tx *sql.Tx, rec *record) error {
		res, err := tx.ExecContext(r.Context(), "DELETE FROM tags WHERE image_id = ? AND tag = ?", rec.ID, tag)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return api.Errorf(http.StatusNotFound, "The resource could not be found.")
		}
		return nil
	})
}

func (s *Store) changeTag(w http.ResponseWriter, r *http.Request, c Caller, change func(*sql.Tx, *record) error) error {
	id := r.PathValue("id")
	err := s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.lookup(r.Context(), tx, c, id)
		if errors.Is(err, errNoImage) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return api.Errorf(http.StatusForbidden, "Not allowed to update tags for image %s.", id)
		}
		if err := change(tx, rec); err != nil {
			return err
		}
		_, err = tx.ExecContext(r.Context(), "UPDATE images SET updated_at = ? WHERE id = ?", now(), id)
		return err
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func (s *Store) deactivate(w http.ResponseWriter, r *http.Request, c Caller) error {
	return s.action(w, r, c, "deactivate", api.StatusActive, api.StatusDeactivated)
}

func (s *Store) reactivate(w http.ResponseWriter, r *http.Request, c Caller) error {
	return s.action(w, r, c, "reactivate", api.StatusDeactivated, api.StatusActive)
}

// action moves an image from one status to another; an image already there is left alone.
func (s *Store) action(w http.ResponseWriter, r *http.Request, c Caller, name, from, to string) error {
	id := r.PathValue("id")
	err := s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.lookup(r.Context(), tx, c, id)
		if errors.Is(err, errNoImage) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return errNotOwner
		}
		switch rec.Status {
		case to:
			return nil
		case from:
		default:
			return api.Errorf(http.StatusForbidden, "Not allowed to %s image in status '%s'", name, rec.Status)
		}
		_, err = tx.ExecContext(r.Context(), "UPDATE images SET status = ?, updated_at = ? WHERE id = ?", to, now(), id)
		return err
	})
	if err != nil {
		return err
	}
	s.log.Info("image "+name+"d", "image", id, "user", c.User)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
