// GET /health: the cheapest JSON endpoint of the same gunicorn, as a yardstick for cached answers.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL } from './lib.js';

export const options = {
  scenarios: {
    trivial: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '8', 10), duration: __ENV.DURATION || '20s' },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)'],
};

export default function () {
  check(http.get(`${BASE_URL}/health`), { 'status is 200': (r) => r.status === 200 });
}
