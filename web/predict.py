"""POST /predict: HTTP only; the job protocol lives in ``web.scoring``, a job's status in ``web.jobs``."""

from common.store.idempotency import KeyUse, body_hash
from web import metrics
from web.errors import IdempotencyConflict, JobFailed, Overloaded
from web.parsing import ApiBlueprint, IdempotencyHeaderSchema, RequestShape
from web.responses import ERROR, JOB_LINK, LOCATION_HEADER, RETRY_AFTER_HEADER, job_accepted, needs_key, predictions_response
from web.schemas import JobAcceptedSchema, PredictionsSchema, plain_texts_body, predict_schemas
from web.scoring import Failed, Idempotency, IdempotencyClash, Pending, QueueFull, Scored, score
from web.security import current_owner
from web.services import services

IDEMPOTENCY_ROUTE = "predict"


def create_predict_blueprint(settings) -> ApiBlueprint:
    """Build the prediction endpoint, bounded by ``settings``."""
    blp = ApiBlueprint("predict", __name__, description="Sentiment scores, answered from cache or from a job.")
    request_schema, query_schema = predict_schemas(settings)
    shape = RequestShape(request_schema(), query_schema(), IdempotencyHeaderSchema(), plain_texts_body(settings))

    @blp.route("/predict", methods=["POST"])
    @blp.doc(responses={"202": {"links": {"GetJob": JOB_LINK}}}, **needs_key(settings))
    @blp.shaped(shape)
    @blp.alt_response(200, schema=PredictionsSchema, description="Every text scored.", success=True)
    @blp.alt_response(
        202, schema=JobAcceptedSchema, headers=LOCATION_HEADER, description="Still computing: poll status_url.", success=True
    )
    @blp.alt_response(400, description="Body is not JSON, not UTF-8 or nested too deeply.", **ERROR)
    @blp.alt_response(401, description="Missing or invalid X-API-Key (when keys are on).", **ERROR)
    @blp.alt_response(409, description="Idempotency-Key used with another body.", **ERROR)
    @blp.alt_response(413, description="Body over the size limit.", **ERROR)
    @blp.alt_response(415, description="Content-Type is not application/json.", **ERROR)
    @blp.alt_response(429, headers=RETRY_AFTER_HEADER, description="A queue budget is full, or a rate limit passed.", **ERROR)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable, or the job expired or failed.", **ERROR)
    def predict(body, wait=None, deadline=None, idempotency_key=None):
        """Score texts as NEGATIVE/POSITIVE."""
        owner = current_owner().name
        if body["text"]:
            metrics.owner_texts(owner, "predict").inc(len(body["text"]))
        idempotency = None
        if idempotency_key is not None:
            use = KeyUse(IDEMPOTENCY_ROUTE, owner, idempotency_key)
            idempotency = Idempotency(use, body_hash({"text": body["text"]}))
        match score(services(), body["text"], wait, deadline, owner, idempotency):
            case Scored(predictions, encoded):
                return predictions_response(predictions, encoded)
            case Pending(job_id, status):
                return job_accepted(job_id, status.value)
            case Failed(job_id, reason):
                raise JobFailed(job_id, reason)
            case IdempotencyClash(job_id):
                raise IdempotencyConflict("this Idempotency-Key was used with another body", details={"job_id": job_id})
            case QueueFull(refusal):
                raise Overloaded.because(refusal, retry_after_s=1)

    return blp
