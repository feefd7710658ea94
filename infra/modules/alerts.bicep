// Log alert rules over the app's telemetry (docs/CONTRACT.md §8) and the action group that mails an operator.
// The queries live in infra/queries/*.kql (also usable as they are in Application Insights > Logs); the
// thresholds are parameters, documented in docs/DEPLOY.md ("Alerts").

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

output actionGroupId string = empty(alertEmail) ? '' : operators.id
output poisonedRuleName string = poisonedRule.name
output hostGaveUpRuleName string = hostGaveUpRule.name
