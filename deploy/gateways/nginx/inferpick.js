// inferpick routing for nginx's JavaScript module (njs 0.7 or later): ask the picker with the
// request's body, so it sees the model (adapters included), the prompt and max_tokens, as it does
// behind Envoy; then proxy to its choice, or refuse in the OpenAI error shape.
//
// Used by inferpick-njs-locations.conf: `location /` runs `route` (js_content), which asks the
// picker through the internal location /_inferpick/authz and ends in one of three ways:
//   - the picker chose: $inferpick_endpoint and $inferpick_decision are set and the request goes
//     to @inferpick_endpoint (proxy_pass, then post_action closes the decision);
//   - the picker refused (its JSON error: 404 unknown model, 429 shed, 503 nothing ready, 400...):
//     the client gets the same status as an OpenAI error, Retry-After kept;
//   - the picker could not be asked (down, timed out, not the picker's answer): the request goes
//     to @inferpick_picker_down, which the server block defines (fail open or closed).

/** OpenAI's error `type` for a refusal's status (the SDKs pick their exception by status). */
function errorType(status) {
    if (status === 429) {
        return 'rate_limit_error';
    }
    if (status >= 500) {
        return 'server_error';
    }
    return 'invalid_request_error';
}

/** The picker's `{"error": CODE, "message": ...}`, or null when the body is not one. */
function pickerError(body) {
    try {
        const e = JSON.parse(body);
        if (e && typeof e.error === 'string' && typeof e.message === 'string') {
            return e;
        }
    } catch (_) {
        // Not JSON: nginx's own error page, so the picker was not the one answering.
    }
    return null;
}

/** Answers `status` with the picker's refusal as `{"error": {"message", "type", "code"}}`. */
function refuse(r, status, e, retryAfter) {
    const body = {error: {message: e.message, type: errorType(status), code: e.error}};
    r.headersOut['Content-Type'] = 'application/json';
    if (retryAfter) {
        r.headersOut['Retry-After'] = retryAfter;
    }
    r.return(status, JSON.stringify(body) + '\n');
}

/** js_content of `location /`: ask the picker with the body, then route, refuse or fall back. */
async function route(r) {
    let reply;
    try {
        // The subrequest carries the client's headers (model, priority, objective, session,
        // subset) and, here, its body.
        reply = await r.subrequest('/_inferpick/authz', {method: 'POST', body: r.requestText || ''});
    } catch (e) {
        r.error(`inferpick: asking the picker failed: ${e}`);
        r.internalRedirect('@inferpick_picker_down');
        return;
    }
    const endpoint = reply.headersOut['x-gateway-destination-endpoint'];
    if (reply.status === 200 && endpoint) {
        r.variables.inferpick_endpoint = endpoint;
        r.variables.inferpick_decision = reply.headersOut['x-inferpick-decision-id'] || '';
        r.internalRedirect('@inferpick_endpoint');
        return;
    }
    const e = pickerError(reply.responseText);
    if (e) {
        refuse(r, reply.status, e, reply.headersOut['Retry-After']);
        return;
    }
    r.warn(`inferpick: the picker answered ${reply.status} without a decision: failing over`);
    r.internalRedirect('@inferpick_picker_down');
}

/** The picker-down 503 of the fail-closed config, in the same shape as the picker's refusals. */
function pickerDown(r) {
    const e = {error: 'no_ready_endpoint', message: 'the inferpick picker cannot be reached'};
    refuse(r, 503, e, '1');
}

export default {route, pickerDown};
