// Log alert rules over the app's telemetry (docs/CONTRACT.md §8, §10), the action group that mails an operator,
// and the kill switch's action group, which calls alert_terminate (docs/CONTRACT.md §9) for budgets and for the
// alert rules an operator points at it. The queries live in infra/queries/*.kql (also usable as they are in
// Application Insights > Logs); the thresholds are parameters, documented in docs/DEPLOY.md ("Alerts").

@description('Azure region of the alert rules (the action group is global).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Resource id of the Application Insights component the rules query.')
param applicationInsightsId string

@description('Suffix that makes the rule names unique in the resource group.')
param nameSuffix string

@description('Optional e-mail address of the operator who is told when a rule fires. Empty: no action group; the alerts still show in Azure Monitor > Alerts.')
param alertEmail string = ''

@minValue(0)
@description('The "poisoned" rule fires when more than this many poison records of one code were written in the window.')
param poisonedThreshold int = 0

@minValue(0)
@description('The "host gave up" rule fires when more than this many configuration errors or host-moved messages occurred in the window.')
param hostGaveUpThreshold int = 0

@description('Create the kill-switch action group (an Azure Function receiver on alert_terminate). Needs the app\'s code deployed: its function key is read at deployment (docs/DEPLOY.md, "The kill switch").')
param killSwitchReceiver bool = false

@description('Resource id of the function app (the kill-switch receiver).')
param functionAppId string = ''

@description('Default host name of the function app, e.g. func-x.azurewebsites.net.')
param functionAppHostName string = ''

@description('The HTTP function the kill-switch action group calls.')
param alertFunctionName string = 'alert_terminate'

@description('How often the rules run (ISO 8601 duration).')
param evaluationFrequency string = 'PT5M'

@description('The time window each evaluation looks at (ISO 8601 duration).')
param windowSize string = 'PT15M'

resource operators 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-batch-terminator-${nameSuffix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'bterm-ops' // at most 12 characters
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = empty(alertEmail) ? [] : [operators.id]

// The kill switch: an Azure Function receiver, not a webhook with a key pasted into its URL. The action group keeps
// the trigger URL with the function's own key (read here with listKeys, never a parameter, never in a file); the
// common alert schema is what alert_terminate reads (budget notifications keep their own schema, §9). The action
// group waits for the answer and retries only on 408, 429, 503, 504 or no answer, which is why alert_terminate
// answers at once: it stores an incident and a plan command and never calls Batch (docs/DEPLOY.md).
// Never attach this group to the rules below: an alert that names no job opens an incident, so the rule that says
// "the kill switch fired" would fire it again.
resource killSwitch 'Microsoft.Insights/actionGroups@2023-01-01' = if (killSwitchReceiver) {
  name: 'ag-batch-kill-switch-${nameSuffix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'bterm-kill' // at most 12 characters
    enabled: true
    azureFunctionReceivers: [
      {
        name: 'alert_terminate'
        functionAppResourceId: functionAppId
        functionName: alertFunctionName
        httpTriggerUrl: 'https://${functionAppHostName}/api/${alertFunctionName}?code=${listKeys('${functionAppId}/functions/${alertFunctionName}', '2023-12-01').default}'
        useCommonAlertSchema: true
      }
    ]
  }
}

// Every poison record is work for an operator (docs/CONTRACT.md §6), so the default threshold is 0:
// the first record of a code fires an alert for that code; it resolves when a window passes without one.
resource poisonedRule 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'batch-terminator-poisoned-${nameSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'batch-terminator: poison records'
    description: 'Messages that ended as poison records (outcome poisoned), one alert per code. Read them with `batch-terminator poison list --code <code>`; see docs/DEPLOY.md.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-poisoned.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'code'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: poisonedThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        app: 'batch-terminator'
        runbook: 'docs/DEPLOY.md#where-failures-go-the-poison-queue'
      }
    }
  }
}

// A configuration error stops every message (each is retried, then parked by the host), and a host-moved
// entry is a message the function could not record: both need someone now, hence severity 1 (Error).
resource hostGaveUpRule 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'batch-terminator-host-gave-up-${nameSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'batch-terminator: configuration errors and host-moved messages'
    description: 'The app is misconfigured (a setting is named in the exception), or the Functions host moved messages raw to a poison queue after maxDequeueCount failed deliveries. See docs/DEPLOY.md.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-host-gave-up.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'kind'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: hostGaveUpThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        app: 'batch-terminator'
        runbook: 'docs/DEPLOY.md#alerts'
      }
    }
  }
}

// --- the kill switch's own alerts (docs/CONTRACT.md §10: one record per incident state, logger batch_terminator) ---

// An incident that was refused (TooManyJobs, ...) or failed (a Batch error on its last attempt) stopped nothing:
// someone must look now, hence severity 1. One alert per incident.
resource incidentFailedRule 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'batch-terminator-incident-failed-${nameSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'batch-terminator: kill-switch incident refused or failed'
    description: 'An incident reached state refused or failed: nothing (or not everything) was stopped. `batch-terminator incidents show <incident>`; fix the cause, then `incidents retry`. See docs/DEPLOY.md.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-incident-failed.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'incident'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        app: 'batch-terminator'
        runbook: 'docs/DEPLOY.md#the-kill-switch'
      }
    }
  }
}

// The kill switch fired: jobs were stopped (and schedules disabled, pools scaled) on an alert, a budget or an
// operator's word. Not an error, but someone should know: severity 2. One alert per incident.
resource incidentExecutedRule 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: 'batch-terminator-incident-executed-${nameSuffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'batch-terminator: the kill switch fired'
    description: 'An incident reached state executed: its jobs are being terminated. `batch-terminator incidents show <incident>`; `incidents undo` re-enables schedules and restores pools (terminated jobs stay terminated).'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/alert-incident-executed.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'incident'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        app: 'batch-terminator'
        runbook: 'docs/DEPLOY.md#the-kill-switch'
      }
    }
  }
}

output actionGroupId string = empty(alertEmail) ? '' : operators.id
output killSwitchActionGroupId string = killSwitchReceiver ? killSwitch.id : ''
output poisonedRuleName string = poisonedRule.name
output hostGaveUpRuleName string = hostGaveUpRule.name
