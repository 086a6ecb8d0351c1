/* POST /tsa: admits the request on the HTTP thread (the client address's
 * token bucket req->srv->tsa_limit: 429 + Retry-After; the API key when
 * req->srv->tsa_require_key: 401), then suspends the connection and answers
 * with req->srv->tsa (tsa_respond) on a signing thread (req->srv->signq). */
#ifndef QWICKD_API_TSA_H
#define QWICKD_API_TSA_H

#include "http/http.h"

void api_tsa(http_req *req);

#endif
