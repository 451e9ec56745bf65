package console

import (
	"net/http"
)

// lang returns the page language: ?lang=fr|en (remembered in a cookie),
// else the cookie, else French.
func lang(w http.ResponseWriter, r *http.Request) string {
	if l := r.URL.Query().Get("lang"); l == "fr" || l == "en" {
		http.SetCookie(w, &http.Cookie{Name: "balise_lang", Value: l, Path: "/", MaxAge: 365 * 24 * 3600,
			SameSite: http.SameSiteStrictMode, HttpOnly: true, Secure: r.TLS != nil})
		return l
	}
	if ck, err := r.Cookie("balise_lang"); err == nil && ck.Value == "en" {
		return "en"
	}
	return "fr"
}

// messages are the console's words: key → {French, English}.
var messages = map[string][2]string{
	"title":               {"Console des exceptions", "Exception console"},
	"skip":                {"Aller au contenu", "Skip to content"},
	"nav":                 {"Navigation principale", "Main navigation"},
	"queue":               {"File d'attente", "Queue"},
	"search":              {"Recherche", "Search"},
	"report":              {"Rapport", "Report"},
	"logout":              {"Se déconnecter", "Sign out"},
	"switch":              {"English", "Français"},
	"signed_in_as":        {"Connecté :", "Signed in:"},
	"role_officer":        {"responsable", "officer"},
	"role_auditor":        {"vérification (lecture seule)", "auditor (read only)"},
	"login":               {"Connexion", "Sign in"},
	"username":            {"Nom d'utilisateur", "User name"},
	"password":            {"Mot de passe", "Password"},
	"sign_in_sso":         {"Se connecter avec la session de ce poste (Kerberos)", "Sign in with this workstation's session (Kerberos)"},
	"sign_in":             {"Se connecter", "Sign in"},
	"pending":             {"Demandes en attente", "Pending requests"},
	"pending_hint":        {"Les plus anciennes d'abord.", "Oldest first."},
	"none_pending":        {"Aucune demande en attente.", "No pending request."},
	"id":                  {"Numéro", "Number"},
	"received":            {"Reçue", "Received"},
	"service":             {"Service", "Service"},
	"requester":           {"Demandeur", "Requester"},
	"workstation":         {"Poste", "Workstation"},
	"user":                {"Utilisateur", "User"},
	"duration_asked":      {"Durée demandée", "Duration asked"},
	"status":              {"État", "Status"},
	"overdue":             {"En retard", "Overdue"},
	"contact":             {"Pour le joindre", "Contact"},
	"host":                {"Site bloqué", "Blocked site"},
	"justification":       {"Justification", "Justification"},
	"history":             {"Historique", "History"},
	"decided_by":          {"Décidée par", "Decided by"},
	"grant":               {"Exception accordée", "Grant"},
	"until":               {"Jusqu'au", "Until"},
	"note":                {"Note", "Note"},
	"approve":             {"Accepter", "Approve"},
	"deny":                {"Refuser", "Deny"},
	"revoke":              {"Révoquer", "Revoke"},
	"extend":              {"Prolonger", "Extend"},
	"for":                 {"Pour", "For"},
	"or_until":            {"ou jusqu'au (facultatif)", "or until (optional)"},
	"extend_by":           {"Prolonger de", "Extend by"},
	"subject":             {"Accorder à", "Grant to"},
	"subject_client":      {"ce poste", "this workstation"},
	"subject_user":        {"cette personne, sur tout poste", "this person, on any workstation"},
	"reason":              {"Motif (obligatoire)", "Reason (required)"},
	"own_request":         {"C'est votre propre demande : un autre responsable doit en décider.", "This is your own request: another officer must decide it."},
	"read_only":           {"Votre rôle permet la consultation seulement.", "Your role allows reading only."},
	"done_approve":        {"Demande acceptée.", "Request approved."},
	"done_deny":           {"Demande refusée.", "Request denied."},
	"done_revoke":         {"Exception révoquée.", "Grant revoked."},
	"done_extend":         {"Exception prolongée.", "Grant extended."},
	"all":                 {"Tous", "All"},
	"text":                {"Texte", "Text"},
	"since":               {"Du", "From"},
	"to":                  {"Au", "To"},
	"find":                {"Chercher", "Search"},
	"results":             {"résultat(s)", "result(s)"},
	"st_pending":          {"en attente", "pending"},
	"st_approved":         {"acceptée", "approved"},
	"st_denied":           {"refusée", "denied"},
	"st_revoked":          {"révoquée", "revoked"},
	"st_expired":          {"expirée", "expired"},
	"report_title":        {"Rapport pour le comité", "Report for the committee"},
	"period":              {"Période", "Period"},
	"show":                {"Afficher", "Show"},
	"print":               {"Imprimer : utilisez la commande d'impression du navigateur (Ctrl+P).", "Print: use the browser's print command (Ctrl+P)."},
	"csv":                 {"Télécharger en CSV", "Download as CSV"},
	"total":               {"Demandes reçues", "Requests received"},
	"by_service":          {"Par service", "By service"},
	"by_month":            {"Par mois", "By month"},
	"by_decision":         {"Par décision", "By decision"},
	"month":               {"Mois", "Month"},
	"count":               {"Nombre", "Count"},
	"median":              {"Délai médian de décision", "Median time to decision"},
	"active_grants":       {"Exceptions actives maintenant", "Active grants now"},
	"audit":               {"Journal d'audit", "Audit log"},
	"audit_ok":            {"chaîne intacte", "chain intact"},
	"audit_bad":           {"CHAÎNE ROMPUE", "CHAIN BROKEN"},
	"verified_at":         {"vérifié le", "verified on"},
	"error":               {"Erreur", "Error"},
	"back":                {"Retour à la file d'attente", "Back to the queue"},
	"details":             {"Détails", "Details"},
	"decision":            {"Décision", "Decision"},
	"ev_request_received": {"demande reçue", "request received"},
	"ev_approved":         {"acceptée", "approved"},
	"ev_denied":           {"refusée", "denied"},
	"ev_revoked":          {"révoquée", "revoked"},
	"ev_expired":          {"expirée", "expired"},
	"ev_extended":         {"prolongée", "extended"},
	"time":                {"Date", "Time"},
	"by":                  {"Par", "By"},
	"none":                {"aucune", "none"},
}

// tr returns the word for key in l.
func tr(l, key string) string {
	m, ok := messages[key]
	if !ok {
		return key
	}
	if l == "en" {
		return m[1]
	}
	return m[0]
}
